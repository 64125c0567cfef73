"""Hand-rolled writers for hostile inputs: GGUF files with any metadata types, safetensors with any header.

The writers do not validate anything, so a test can put any value in any field; they are checked
against the readers on valid input (tests/fuzz/test_fuzz_readers.py).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# GGUF value types (gguf-py GGUFValueType)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
_FMT = {
    U8: "<B",
    I8: "<b",
    U16: "<H",
    I16: "<h",
    U32: "<I",
    I32: "<i",
    F32: "<f",
    BOOL: "<B",
    U64: "<Q",
    I64: "<q",
    F64: "<d",
}


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gvalue(vtype: int, value) -> bytes:
    """The bytes of one GGUF value; arrays are ``(elem_type, [values])``."""
    if vtype == STRING:
        return gstr(value)
    if isinstance(value, bytes) and vtype != STRING:  # raw payload, for values no writer would produce
        return value
    if vtype == ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(gvalue(etype, v) for v in items)
    return struct.pack(_FMT[vtype], value)


def gguf_bytes(kv: list[tuple[str, int, object]], tensors: list[tuple[str, tuple[int, ...], int, bytes]]) -> bytes:
    """A GGUF v3 file: ``kv`` (key, value type, value), ``tensors`` (name, ggml ne, type id, data) back to back."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    out += b"".join(gstr(k) + struct.pack("<I", t) + gvalue(t, v) for k, t, v in kv)
    datas, off = b"", 0
    for name, ne, tid, data in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", tid, off)
        chunk = data + b"\0" * (-len(data) % 32)
        datas += chunk
        off += len(chunk)
    out += b"\0" * (-len(out) % 32)
    return out + datas


# A complete 1-layer llama of F32 tensors: hidden 8, 2 heads of 4, 1 KV head, ffn 16, vocab 16.
H, HEADS, KV, D, FF, VOCAB = 8, 2, 1, 4, 16, 16


def llama_kv(**changes) -> list[tuple[str, int, object]]:
    kv = {
        "general.architecture": (STRING, "llama"),
        "llama.block_count": (U32, 1),
        "llama.context_length": (U32, 64),
        "llama.embedding_length": (U32, H),
        "llama.feed_forward_length": (U32, FF),
        "llama.attention.head_count": (U32, HEADS),
        "llama.attention.head_count_kv": (U32, KV),
        "llama.rope.dimension_count": (U32, D),
        "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5),
        "llama.rope.freq_base": (F32, 10000.0),
        "llama.vocab_size": (U32, VOCAB),
    }
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            kv.pop(k, None)
        else:
            kv[k] = v
    return [(k, t, v) for k, (t, v) in kv.items()]


def llama_tensors(layers: int = 1, *, drop: tuple[str, ...] = (), swap: tuple[str, ...] = ()):
    """(name, ne, F32, data) of a whole model; ``swap`` names tensors whose two dims are exchanged."""
    shapes = {"token_embd.weight": (H, VOCAB), "output_norm.weight": (H,), "output.weight": (H, VOCAB)}
    for i in range(layers):
        b = f"blk.{i}"
        shapes |= {
            f"{b}.attn_norm.weight": (H,),
            f"{b}.attn_q.weight": (H, HEADS * D),
            f"{b}.attn_k.weight": (H, KV * D),
            f"{b}.attn_v.weight": (H, KV * D),
            f"{b}.attn_output.weight": (HEADS * D, H),
            f"{b}.ffn_norm.weight": (H,),
            f"{b}.ffn_gate.weight": (H, FF),
            f"{b}.ffn_up.weight": (H, FF),
            f"{b}.ffn_down.weight": (FF, H),
        }
    rng = np.random.default_rng(0)
    out = []
    for name, ne in shapes.items():
        if name in drop:
            continue
        if name in swap:
            ne = ne[::-1]
        data = rng.standard_normal(int(np.prod(ne)), dtype=np.float32).tobytes()
        out.append((name, ne, 0, data))
    return out


def write_gguf(path: Path, kv=None, tensors=None) -> Path:
    path.write_bytes(gguf_bytes(llama_kv() if kv is None else kv, llama_tensors() if tensors is None else tensors))
    return path


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def hf_config(**changes) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": H,
        "intermediate_size": FF,
        "num_hidden_layers": 1,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    cfg.update(changes)
    return cfg


def hf_tensors(layers: int = 1) -> dict[str, np.ndarray]:
    """A whole tiny HF Llama (float32), shapes from `hf_config`."""
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (VOCAB, H), "model.norm.weight": (H,), "lm_head.weight": (VOCAB, H)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (H,),
            f"{p}.post_attention_layernorm.weight": (H,),
            f"{p}.self_attn.q_proj.weight": (HEADS * D, H),
            f"{p}.self_attn.k_proj.weight": (KV * D, H),
            f"{p}.self_attn.v_proj.weight": (KV * D, H),
            f"{p}.self_attn.o_proj.weight": (H, HEADS * D),
            f"{p}.mlp.gate_proj.weight": (FF, H),
            f"{p}.mlp.up_proj.weight": (FF, H),
            f"{p}.mlp.down_proj.weight": (H, FF),
        }
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def write_hf(folder: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    from jquant.convert.safetensors_io import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config() if config is None else config))
    write_safetensors(folder / "model.safetensors", hf_tensors() if tensors is None else tensors)
    return folder
