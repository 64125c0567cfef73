"""Run a converted checkpoint in a transformers model: `patch_model` and `from_checkpoint`.

`patch_model` walks ``Checkpoint.weights`` by HF name: every quantized linear weight replaces its
``nn.Linear`` by a `QuantLinear` (the bias moves over), every plain array is copied into the
matching parameter or buffer, and an activation recipe (``<module>.input_quant``, a
`jquant.core.activation.ActQuant` of W8A8 / FP8 / FP4 checkpoints) goes to its layer, which then
quantizes its inputs as the checkpoint specifies. A quantized embedding table (GGUF quantizes ``token_embd``) is
dequantized into its ``nn.Embedding`` (a row gather needs no matmul kernel; the table is the one
weight stored dense). Names the model does not have are an error, never silently dropped.

MoE experts: jquant checkpoints name them per expert (``<block>.experts.{e}.<proj>.weight``), while
transformers 5 holds each block's experts as 3-D parameters in one module (``MixtralExperts``,
``Qwen2MoeExperts``, ``Qwen3MoeExperts``, ``GptOssExperts``; Mixtral's ``block_sparse_moe`` is
renamed ``mlp``). Quantized experts replace that module by a `QuantExperts` (one `QuantLinear` per
expert and projection, the HF module's own ``_apply_gate`` for the activation, so gpt-oss' clamped,
interleaved SwiGLU and the plain SwiGLU are transformers' code); dense per-expert weights are copied
into the 3-D parameters (``gate_up_proj[e] = cat([gate, up])``, transposed for gpt-oss' [E, in, out]).
Fused 3-D names (``mlp.experts.gate_up_proj``) are parameters already and are copied as they are.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from jquant.core.activation import ActQuant
from jquant.core.errors import ConfigError
from jquant.core.qarray import QArray
from torch_bridge.dequant import dequantize
from torch_bridge.linear import QuantLinear, fuse
from torch_bridge.tensor import as_tensor, to_torch

__all__ = ["patch_model", "from_checkpoint", "PatchReport", "QuantExperts", "Decoder"]


class PatchReport(dict):
    """What `patch_model` did: name lists ``quantized``, ``dense``, ``embedding_dequantized``,
    ``input_quant`` (recipes applied) and ``unknown`` (checkpoint names the model has no place for)."""


CHECKPOINT = "checkpoint"


def _weights(ckpt: Any) -> dict[str, Any]:
    return ckpt.weights if hasattr(ckpt, "weights") else dict(ckpt)


def _split(name: str) -> tuple[str, str]:
    mod, _, leaf = name.rpartition(".")
    return mod, leaf


def patch_model(
    model: nn.Module,
    ckpt: Any,
    *,
    act_quant: str | None = CHECKPOINT,
    implementation: str | None = None,
    device: torch.device | str | None = None,
    strict: bool = True,
) -> PatchReport:
    """Replaces the model's ``nn.Linear`` layers by `QuantLinear` over ``ckpt``'s canonical weights.

    Args:
        model: a transformers (or any torch) model whose parameter names are the checkpoint's HF
            names, e.g. ``LlamaForCausalLM``.
        ckpt: a `jquant.Checkpoint` (or a mapping HF name -> QArray | array).
        act_quant: ``"checkpoint"`` (default): each layer quantizes its inputs as its
            ``input_quant`` entry says (weight-only where there is none); None: weight-only
            everywhere (recipes ignored); "int8" / "fp8": that dynamic W8A8 recipe everywhere.
        implementation: force one backend by name.
        device: where the quantized buffers go (default: the replaced module's device).
        strict: raise on checkpoint tensors the model has no place for.

    Returns:
        a `PatchReport`; the model is patched in place.

    Raises:
        ConfigError: a checkpoint name with no module / parameter, a quantized weight on a module
            that is not ``nn.Linear`` / ``nn.Embedding``, or a shape mismatch, naming the tensor.
    """
    report = PatchReport(quantized=[], dense=[], embedding_dequantized=[], input_quant=[], unknown=[])
    weights = _weights(ckpt)
    recipes = {n.rpartition(".")[0]: a for n, a in weights.items() if isinstance(a, ActQuant)}
    dense = []
    # A model built without its weights (parameters on the meta device, `from_checkpoint`) gets
    # uninitialized storage first; every such parameter the model keeps must be filled below.
    unset = _materialize_meta_parameters(model, device)
    filled: set[int] = set()  # id() of the parameters written from the checkpoint
    # Pass 0: per-expert weights into (or in place of) transformers' 3-D experts modules.
    done = _patch_experts(
        model, weights, report, act_quant=act_quant, implementation=implementation, device=device, filled=filled
    )
    # Pass 1: quantized weights replace their modules (a replaced Linear keeps its bias parameter).
    for name, w in weights.items():
        if isinstance(w, ActQuant) or name in done:
            continue
        if not isinstance(w, QArray):
            dense.append(name)
            continue
        mod_name, leaf = _split(name)
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            module = None
        if module is None or leaf != "weight":
            report["unknown"].append(name)
        elif isinstance(module, nn.Linear):
            if (module.out_features, module.in_features) != tuple(w.shape):
                raise ConfigError(
                    f"checkpoint shape {w.shape} != model Linear ({module.out_features}, {module.in_features})",
                    tensor=name,
                )
            dev = device if device is not None else module.weight.device
            if torch.device(dev).type == "meta":
                dev = "cpu"
            act = recipes.get(mod_name) if act_quant == CHECKPOINT else act_quant
            q = QuantLinear(w, module.bias, act_quant=act, implementation=implementation, device=dev)
            if act is not None and act_quant == CHECKPOINT:
                report["input_quant"].append(f"{mod_name}.input_quant")
            parent_name, _, child = mod_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
            report["quantized"].append(name)
        elif isinstance(module, nn.Embedding):
            _copy_into(module.weight, dequantize(to_torch(w)), name)
            filled.add(id(module.weight))
            report["embedding_dequantized"].append(name)
        else:
            raise ConfigError(
                f"quantized weight for a {type(module).__name__}; only nn.Linear / nn.Embedding can take one",
                tensor=name,
            )
    for mod_name in recipes:
        if f"{mod_name}.input_quant" not in report["input_quant"] and act_quant == CHECKPOINT:
            report["unknown"].append(f"{mod_name}.input_quant")  # a recipe without a quantized linear
    # Pass 2: plain arrays into the (patched) model's parameters and buffers.
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for name in dense:
        target = params.get(name, buffers.get(name))
        if target is None and ".block_sparse_moe." in name:  # Mixtral's router, transformers 5 spelling
            alt = name.replace(".block_sparse_moe.", ".mlp.")
            target = params.get(alt, buffers.get(alt))
        if target is None:
            report["unknown"].append(name)
            continue
        _copy_into(target, as_tensor(np.asarray(weights[name])), name)
        filled.add(id(target))
        report["dense"].append(name)
    if strict and report["unknown"]:
        raise ConfigError(f"the model has no parameter for {len(report['unknown'])} checkpoint tensors",
                          tensor=report["unknown"][0])  # fmt: skip
    missing = [n for n, p in model.named_parameters(remove_duplicate=False) if n in unset and id(p) not in filled]
    if missing:
        raise ConfigError(
            f"{len(missing)} model parameters have no tensor in the checkpoint (the model was built without "
            "weights, so nothing else would set them)",
            tensor=missing[0],
        )
    return report


def _materialize_meta_parameters(model: nn.Module, device) -> set[str]:
    """Gives every parameter on the meta device uninitialized storage on ``device`` (default CPU).

    Ties (one parameter under several names, e.g. a tied ``lm_head``) stay ties. The storage is
    allocated, not written: the pages of weights that the patch replaces by quantized layers are
    never touched, so they never count against the process' memory.

    Returns:
        every name (all aliases) of the parameters so created.
    """
    dev = device if device is not None and torch.device(device).type != "meta" else "cpu"
    made: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}  # id(meta) -> (meta, real): keeps ids unique
    names: set[str] = set()
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in list(module._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in made:
                real = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=dev), requires_grad=p.requires_grad)
                made[id(p)] = (p, real)
            module._parameters[leaf] = made[id(p)][1]
            names.add(f"{mod_name}.{leaf}" if mod_name else leaf)
    return names


_EXPERT_RE = re.compile(r"(?P<block>.+)\.experts\.(?P<e>\d+)\.(?P<proj>[A-Za-z0-9_]+)\.(?P<leaf>weight|bias)")
# Checkpoint projection names -> role (Mixtral's w1 / w3 / w2; gpt-oss' fused, interleaved gate_up_proj).
_ROLES = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
          "gate_up_proj": "gate_up"}  # fmt: skip


class QuantExperts(nn.Module):
    """A transformers-5 experts module (``forward(hidden_states, top_k_index, top_k_weights)``) over
    one linear per expert and projection (`QuantLinear`, or ``nn.Linear`` for dense experts).

    Per expert e: ``gate_up = gate_up_e(x)`` (gpt-oss, rows as its checkpoint interleaves them) or
    ``cat([gate_e(x), up_e(x)], -1)``, then the replaced module's own ``_apply_gate`` (with its
    ``act_fn`` / ``alpha`` / ``limit``), then ``down_e``; weighted by the token's routing weight and
    ``index_add``-ed per token, in expert order, as transformers' eager experts loop does.

    Args:
        original: the replaced experts module (its gate function and its settings are kept).
        linears: role (``gate_up`` or ``gate`` / ``up``, and ``down``) -> E modules.
    """

    def __init__(self, original: nn.Module, linears: dict[str, list[nn.Module]]):
        super().__init__()
        self.num_experts = len(linears["down"])
        self.gate_fn = type(original)._apply_gate
        for attr in ("act_fn", "alpha", "limit"):
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))
        self.fused = "gate_up" in linears
        for role, mods in linears.items():
            setattr(self, f"{role}_proj", nn.ModuleList(mods))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        """[tokens, hidden], int [tokens, k], float [tokens, k] -> [tokens, hidden]."""
        out = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            token, pos = torch.where(top_k_index == e)
            if token.numel() == 0:
                continue
            x = hidden_states[token]
            gu = self.gate_up_proj[e](x) if self.fused else torch.cat([self.gate_proj[e](x), self.up_proj[e](x)], -1)
            y = self.down_proj[e](self.gate_fn(self, gu)) * top_k_weights[token, pos, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def _experts_module(model: nn.Module, block: str) -> tuple[str, nn.Module] | None:
    for name in (f"{block}.experts", f"{block.replace('.block_sparse_moe', '.mlp')}.experts"):
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(getattr(m, "down_proj", None), nn.Parameter):  # the 3-D experts of transformers 5
            return name, m
    return None


def _patch_experts(model, weights, report, *, act_quant, implementation, device, filled) -> set[str]:
    """Pass 0 of `patch_model` (module docstring); returns the checkpoint names it consumed."""
    blocks: dict[str, dict[tuple[int, str, str], str]] = {}
    for name in weights:
        m = _EXPERT_RE.fullmatch(name)
        if m and m["proj"] in _ROLES:
            blocks.setdefault(m["block"], {})[(int(m["e"]), _ROLES[m["proj"]], m["leaf"])] = name
    done: set[str] = set()
    for block, names in blocks.items():
        found = _experts_module(model, block)
        if found is None:
            continue  # left to the generic passes, which report what the model has no place for
        mod_name, experts = found
        n_exp = experts.num_experts
        roles = ("gate_up", "down") if any(r == "gate_up" for _, r, _ in names) else ("gate", "up", "down")
        for e in range(n_exp):
            for r in roles:
                if (e, r, "weight") not in names:
                    raise ConfigError(
                        f"expert {e} has no {r} projection in the checkpoint", tensor=f"{block}.experts.{e}"
                    )
        if any(isinstance(weights[n], ActQuant) for n in names.values()):
            raise ConfigError("experts with input-activation recipes are not supported", tensor=block)
        if any(isinstance(weights[n], QArray) for n in names.values()):
            dev = device if device is not None else experts.down_proj.device
            if torch.device(dev).type == "meta":
                dev = "cpu"
            linears = {
                r: [_expert_linear(weights, names, e, r, act_quant, implementation, dev) for e in range(n_exp)]
                for r in roles
            }
            parent, _, child = mod_name.rpartition(".")
            setattr(model.get_submodule(parent), child, QuantExperts(experts, linears))
            report["quantized"].extend(n for n in names.values() if isinstance(weights[n], QArray))
            report["dense"].extend(n for n in names.values() if not isinstance(weights[n], QArray))
        else:
            _copy_experts(experts, weights, names, roles, n_exp, block, filled)
            report["dense"].extend(names.values())
        done.update(names.values())
    return done


def _expert_linear(weights, names, e, role, act_quant, implementation, device) -> nn.Module:
    w = weights[names[(e, role, "weight")]]
    b = names.get((e, role, "bias"))
    bias = None if b is None else as_tensor(np.asarray(weights[b])).to(device)
    if isinstance(w, QArray):
        act = None if act_quant == CHECKPOINT else act_quant
        return QuantLinear(w, bias, act_quant=act, implementation=implementation, device=device)
    t = as_tensor(np.asarray(w)).to(device)
    lin = nn.Linear(t.shape[1], t.shape[0], bias=bias is not None, device=device, dtype=t.dtype)
    with torch.no_grad():
        lin.weight.copy_(t)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _copy_experts(experts, weights, names, roles, n_exp, block, filled: set[int]) -> None:
    """Dense per-expert weights into the 3-D parameters (HF [E, out, in], or [E, in, out] when transposed);
    adds the parameters written to ``filled`` (every expert has every role: `_patch_experts` checked)."""
    transposed = getattr(experts, "is_transposed", False)
    for e in range(n_exp):
        w = {r: as_tensor(np.asarray(weights[names[(e, r, "weight")]])) for r in roles}
        gate_up = w["gate_up"] if "gate_up" in w else torch.cat([w["gate"], w["up"]])
        for param, value in (("gate_up_proj", gate_up), ("down_proj", w["down"])):
            _copy_into(getattr(experts, param)[e], value.T if transposed else value, f"{block}.experts.{e}.{param}")
            filled.add(id(getattr(experts, param)))
        for r, param in (("gate_up", "gate_up_proj_bias"), ("down", "down_proj_bias")):
            if (e, r, "bias") in names:
                _copy_into(
                    getattr(experts, param)[e],
                    as_tensor(np.asarray(weights[names[(e, r, "bias")]])),
                    f"{block}.experts.{e}.{param}",
                )
                filled.add(id(getattr(experts, param)))


def _copy_into(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if tuple(target.shape) != tuple(value.shape):
        raise ConfigError(f"checkpoint shape {tuple(value.shape)} != model {tuple(target.shape)}", tensor=name)
    with torch.no_grad():
        target.copy_(value.to(target.dtype))


def from_checkpoint(
    ckpt: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    act_quant: str | None = CHECKPOINT,
    implementation: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """A transformers causal LM built from ``ckpt.config`` and patched with ``ckpt``'s weights.

    Args:
        ckpt: a `jquant.Checkpoint`.
        dtype: dtype of the dense parameters (norms, embeddings) and of the activations.
        device: where the model runs.
        act_quant, implementation, strict: see `patch_model`.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**cfg)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in _weights(ckpt):
        config.tie_word_embeddings = False  # the checkpoint has its own (maybe quantized) head
    # Parameters on the meta device, buffers (rotary tables) computed for real: the float model the
    # quantized layers replace is never allocated (a 135M model's f32 weights are 0.5 GB).
    with init_empty_weights(include_buffers=False), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # accelerate's meta hook re-creates each parameter as it is registered, which unties a tied
    # lm_head; tie it again so that it reads the embedding the checkpoint fills
    model.tie_weights()
    model.jquant_patch_report = patch_model(
        model, ckpt, act_quant=act_quant, implementation=implementation, device=device, strict=strict
    )
    return model.eval()


class Decoder:
    """Greedy batch-1 decoding of a patched Llama-family model without transformers' per-token machinery.

    transformers' eager forward costs ~0.5 ms per decoder layer and token on a laptop-class CPU
    (module calls and hooks, mask building, ``DynamicCache`` concatenation, three q / k / v and two
    gate / up kernel calls), more than the quantized matmuls of a 135M model. ``Decoder`` runs the
    prompt through the model's own forward (``DynamicCache``), copies the cache into preallocated
    [1, H_kv, max_len, D] buffers, then computes each new token with the same functions on the
    same tensors: the model's RMSNorm arithmetic, rotary module, ``apply_rotary_pos_emb``,
    attention function (``config._attn_implementation``) and activation; q / k / v and gate / up
    as one fused quantized matmul each (`torch_bridge.linear.fuse`, row-independent: the same
    numbers), every `QuantLinear` called through its `QuantLinear.runner`. The logits equal the
    model's forward with a ``DynamicCache`` (tests/torch_bridge/test_cpu_decoder.py).

    Supported: ``llama``, ``mistral`` (no sliding window shorter than ``max_len``) and ``qwen2``
    (q / k / v biases) decoders with full attention. Not thread-safe; one sequence at a time.

    Args:
        model: a `from_checkpoint` / `patch_model` model (``LlamaForCausalLM`` & co.), in eval mode.
        max_len: the longest prompt + generated length the cache holds.

    Example::

        >>> dec = Decoder(torch_bridge.from_checkpoint(ckpt))
        >>> tokens = dec.generate(prompt_ids, max_new_tokens=64)
    """

    MODEL_TYPES = ("llama", "mistral", "qwen2")

    def __init__(self, model: nn.Module, max_len: int = 2048):
        cfg = model.config
        if cfg.model_type not in self.MODEL_TYPES:
            raise ConfigError(f"Decoder runs {self.MODEL_TYPES} models, not {cfg.model_type!r}")
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        if window is not None and window < max_len:
            raise ConfigError(f"sliding window {window} < max_len {max_len}: not supported by Decoder")
        if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
            raise ConfigError("Decoder runs full-attention layers only")
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = model.model
        self.model, self.max_len = model, max_len
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        hf = sys.modules[type(inner.layers[0].self_attn).__module__]  # the architecture's own functions
        self._rope, self._rotate_half = hf.apply_rotary_pos_emb, hf.rotate_half
        self._attention = ALL_ATTENTION_FUNCTIONS.get_interface(cfg._attn_implementation, hf.eager_attention_forward)
        # transformers' sdpa_attention_forward at one query row, no mask, head_dim <= 256 on the CPU is one
        # F.scaled_dot_product_attention(..., is_causal=False, enable_gqa=groups > 1) call; made directly.
        attn0 = inner.layers[0].self_attn
        self._direct_sdpa = cfg._attn_implementation == "sdpa" and self.device.type == "cpu" and attn0.head_dim <= 256
        self._gqa = {"enable_gqa": True} if attn0.num_key_value_groups > 1 else {}
        self._layers = [self._layer(layer) for layer in inner.layers]
        self._norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self._head = self._call(model.lm_head)
        self._pos = torch.arange(max_len, device=self.device)[None]
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0  # tokens in the cache

    def _call(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return module.runner(self.device, self.dtype) if isinstance(module, QuantLinear) else module

    def _layer(self, layer: nn.Module) -> dict:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        gate_up = fuse([mlp.gate_proj, mlp.up_proj])
        return dict(
            attn=attn,
            norm1=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
            norm2=(layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
            qkv=None if qkv is None else self._call(qkv),
            split=(attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features),
            q=self._call(attn.q_proj),
            k=self._call(attn.k_proj),
            v=self._call(attn.v_proj),
            o=self._call(attn.o_proj),
            gate_up=None if gate_up is None else self._call(gate_up),
            inter=mlp.gate_proj.out_features,
            gate=self._call(mlp.gate_proj),
            up=self._call(mlp.up_proj),
            down=self._call(mlp.down_proj),
            act=mlp.act_fn,
        )

    def _rms(self, x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
        # LlamaRMSNorm.forward's arithmetic; its float32 round trip is skipped for float32 models (a no-op).
        weight, eps = norm
        if x.dtype == torch.float32:
            return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    @torch.inference_mode()
    def prefill(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Runs the prompt through the model's forward (starting a new sequence); returns its logits [1, L, V]."""
        from transformers import DynamicCache

        ids = torch.as_tensor(ids, device=self.device).reshape(1, -1)
        if ids.shape[1] >= self.max_len:
            raise ValueError(f"prompt of {ids.shape[1]} tokens >= max_len {self.max_len}")
        cache = DynamicCache()
        kw = {"cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values": cache}
        logits = self.model(input_ids=ids, use_cache=True, **kw).logits  # transformers 5.x renamed the argument
        if not self._cache:  # [1, H_kv, max_len, D] per layer, allocated once
            for layer in cache.layers:
                shape = (*layer.keys.shape[:2], self.max_len, layer.keys.shape[3])
                self._cache.append(tuple(torch.zeros(shape, dtype=layer.keys.dtype, device=self.device) for _ in "kv"))
        n = ids.shape[1]
        for (kc, vc), layer in zip(self._cache, cache.layers):
            kc[:, :, :n] = layer.keys
            vc[:, :, :n] = layer.values
        self.length = n
        return logits

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Appends ``token`` at the next position; returns its logits [1, 1, V] (in the model's dtype)."""
        pos = self.length
        if pos >= self.max_len:
            raise ValueError(f"the cache is full (max_len {self.max_len})")
        x = torch.nn.functional.embedding(
            torch.tensor([[token]], device=self.device), self.model.model.embed_tokens.weight
        )
        cos, sin = self.model.model.rotary_emb(x, self._pos[:, pos : pos + 1])
        cos1, sin1 = cos.unsqueeze(1), sin.unsqueeze(1)  # what apply_rotary_pos_emb broadcasts
        sdpa = torch.nn.functional.scaled_dot_product_attention
        for L, (kc, vc) in zip(self._layers, self._cache):
            attn = L["attn"]
            d = attn.head_dim
            h = self._rms(x, L["norm1"])
            if L["qkv"] is not None:
                # q and k are adjacent rows of the fused output: rotated together, element for element
                # apply_rotary_pos_emb's q * cos + rotate_half(q) * sin (and k's), in one set of ops.
                nq, nk, _ = L["split"]
                qkv = L["qkv"](h)
                qk = qkv[..., : nq + nk].view(1, 1, -1, d).transpose(1, 2)
                qk = qk * cos1 + self._rotate_half(qk) * sin1
                q, k = qk.narrow(1, 0, nq // d), qk.narrow(1, nq // d, nk // d)
                v = qkv[..., nq + nk :].view(1, 1, -1, d).transpose(1, 2)
            else:
                q, k, v = L["q"](h), L["k"](h), L["v"](h)
                q = q.view(1, 1, -1, d).transpose(1, 2)
                k = k.view(1, 1, -1, d).transpose(1, 2)
                v = v.view(1, 1, -1, d).transpose(1, 2)
                q, k = self._rope(q, k, cos, sin)
            kc.narrow(2, pos, 1).copy_(k)
            vc.narrow(2, pos, 1).copy_(v)
            keys, values = kc.narrow(2, 0, pos + 1), vc.narrow(2, 0, pos + 1)
            if self._direct_sdpa:
                o = sdpa(q, keys, values, scale=attn.scaling, **self._gqa).transpose(1, 2)
            else:
                o, _ = self._attention(attn, q, keys, values, None, dropout=0.0, scaling=attn.scaling)
            x = x + L["o"](o.reshape(1, 1, -1).contiguous())
            h = self._rms(x, L["norm2"])
            if L["gate_up"] is not None:
                g, u = L["gate_up"](h).split(L["inter"], -1)
            else:
                g, u = L["gate"](h), L["up"](h)
            x = x + L["down"](L["act"](g) * u)
        self.length = pos + 1
        return self._head(self._rms(x, self._norm))

    def generate(self, ids: list[int] | torch.Tensor, max_new_tokens: int, on_token=None) -> list[int]:
        """Greedy: the prompt's next ``max_new_tokens`` tokens (end tokens do not stop it); ``on_token(t)``
        is called as each one is chosen."""
        logits = self.prefill(ids)[:, -1]
        out: list[int] = []
        for i in range(max_new_tokens):
            t = int(logits.argmax(-1))
            out.append(t)
            if on_token is not None:
                on_token(t)
            if i + 1 < max_new_tokens:
                logits = self.step(t)[:, -1]
        return out
