"""The tokenizer of a GGUF file, rebuilt from its metadata with the `tokenizers` library.

A GGUF carries no ``tokenizer.json``: llama.cpp stores the vocabulary as metadata
(``tokenizer.ggml.model``, ``.pre``, ``.tokens``, ``.merges``, ``.scores``, ``.token_type``, special
ids, ``tokenizer.chat_template``). This module builds the same fast tokenizer transformers builds for
``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` (``integrations/gguf/gguf_tokenizer_mapping.py``:
``byte_level_tokenizer`` / ``sentencepiece_tokenizer`` + ``add_gguf_special_tokens`` +
``set_split_regex``) without needing transformers or gguf-py to read the file:

* ``"gpt2"`` (byte-level BPE: SmolLM, Llama 3, Qwen): tokens respelled into the GPT-2 byte
  alphabet, merges from the file, a split regex chosen by ``tokenizer.ggml.pre`` (GPT-2's own
  when llama.cpp's pre-tokenizer name is not one transformers maps), ByteLevel decoding.
* ``"llama"`` (SentencePiece BPE: Llama 1/2, Mistral): Metaspace pre-tokenizer, byte fallback,
  merges from the file or derived from the scores (transformers ``generate_merges``).

Tokens llama.cpp marks CONTROL (type 3) become special added tokens, USER_DEFINED (4) plain added
tokens. BOS / EOS are added per ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` (SentencePiece
files without the flag get BOS, as llama.cpp does).

`build_tokenizer` returns a `tokenizers.Tokenizer`; `load_tokenizer` wraps it in a transformers
`PreTrainedTokenizerFast` with the special tokens and chat template (imports transformers lazily).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from jquant.convert.gguf_reader import GGUFFile
from jquant.core.errors import ConfigError, UnsupportedFormatError

__all__ = ["build_tokenizer", "load_tokenizer", "save_tokenizer", "tokenizer_settings", "SPLIT_REGEX"]

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp llama_token_type

_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> split regex (transformers GGUF_PRE_TOKENIZER_SPLITS, 5.24); others use GPT-2's.
SPLIT_REGEX: dict[str, str] = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
        _LLAMA3,
    ),
    **dict.fromkeys(("jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    "tekken": _TEKKEN,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (openai/gpt-2 encoder.py bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


# tokenizer.ggml.* key -> the value type jquant's tokenizer builder reads.
_TOKENIZER_TYPES: dict[str, tuple[str, ...]] = {
    "tokenizer.ggml.model": ("STRING",),
    "tokenizer.ggml.pre": ("STRING",),
    "tokenizer.chat_template": ("STRING",),
    "tokenizer.ggml.tokens": ("ARRAY[STRING]",),
    "tokenizer.ggml.merges": ("ARRAY[STRING]",),
    "tokenizer.ggml.add_bos_token": ("BOOL",),
    "tokenizer.ggml.add_eos_token": ("BOOL",),
}
_INTS = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")
_FLOATS = ("FLOAT32", "FLOAT64")


def check_tokenizer_metadata(f: GGUFFile) -> None:
    """Refuses tokenizer metadata of the wrong type or length before anything builds a tokenizer from it.

    Raises:
        ConfigError: naming the key: a value of the wrong GGUF type, ``scores`` / ``token_type`` of
            another length than ``tokens``, a merge that is not two tokens separated by one space.
    """
    md, vt = f.metadata, f.value_types

    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=f.path, tensor=key)

    for key, want in _TOKENIZER_TYPES.items():
        if key in md and vt[key] not in want:
            raise bad(key, f"value of type {vt[key]}, expected {' or '.join(want)}")
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "seperator_token_id"):
        k = f"tokenizer.ggml.{key}"
        if k in md and vt[k] not in _INTS:
            raise bad(k, f"value of type {vt[k]}, expected an integer")
    n = len(md.get("tokenizer.ggml.tokens", ()))
    for key, kinds in (("tokenizer.ggml.scores", _FLOATS + _INTS), ("tokenizer.ggml.token_type", _INTS)):
        if key in md:
            if vt[key] not in tuple(f"ARRAY[{k}]" for k in kinds):
                raise bad(key, f"value of type {vt[key]}, expected a numeric array")
            if len(md[key]) != n:
                raise bad(key, f"{len(md[key])} entries for {n} tokens")
    for i, m in enumerate(md.get("tokenizer.ggml.merges", ())):
        parts = m.split(" ")
        if len(parts) != 2 or not all(parts):
            raise bad("tokenizer.ggml.merges", f"merge #{i} {m[:40]!r} is not two tokens separated by one space")


def tokenizer_settings(f: GGUFFile) -> dict[str, Any]:
    """The tokenizer-relevant metadata of an opened file, with llama.cpp's defaults applied."""
    md = f.metadata
    model = md.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in md:
        raise UnsupportedFormatError("the file has no tokenizer metadata", file=f.path, tensor="tokenizer.ggml.model")
    tokens = md["tokenizer.ggml.tokens"]

    def special(key):
        i = md.get(f"tokenizer.ggml.{key}")
        return None if i is None or not 0 <= int(i) < len(tokens) else tokens[int(i)]

    return {
        "model": model,
        "pre": md.get("tokenizer.ggml.pre"),
        "add_bos_token": bool(md.get("tokenizer.ggml.add_bos_token", model == "llama")),
        "add_eos_token": bool(md.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": special("bos_token_id"),
        "eos_token": special("eos_token_id"),
        "unk_token": special("unknown_token_id"),
        "pad_token": special("padding_token_id"),
        "chat_template": md.get("tokenizer.chat_template"),
    }


def _sentencepiece_merges(tokens: list[str], scores) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary and its scores (transformers ``generate_merges``)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab_scores = dict(zip(tokens, (float(s) for s in scores), strict=True))
    merges = []
    for merge, score in vocab_scores.items():
        local = [
            (merge[:i], merge[i:], score) for i in range(1, len(merge)) if merge[:i] in vocab and merge[i:] in vocab
        ]
        merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def build_tokenizer(path: str | os.PathLike | GGUFFile):
    """A `tokenizers.Tokenizer` equivalent to transformers' for this GGUF file.

    Raises:
        UnsupportedFormatError: no tokenizer metadata, or a ``tokenizer.ggml.model`` other than
            ``"gpt2"`` / ``"llama"``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    f = path if isinstance(path, GGUFFile) else GGUFFile(path)
    s = tokenizer_settings(f)
    md = f.metadata
    tokens: list[str] = list(md["tokenizer.ggml.tokens"])
    types = md.get("tokenizer.ggml.token_type")
    types = [0] * len(tokens) if types is None else [int(t) for t in types]
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]] if "tokenizer.ggml.merges" in md else None
    if s["model"] == "gpt2":
        spelling = _byte_alphabet()
        alphabet = set(spelling.values())
        vocab = {
            (t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
            for i, t in enumerate(tokens)
        }
        tok = Tokenizer(
            models.BPE(
                vocab=vocab, merges=merges or [], dropout=None, continuing_subword_prefix="", end_of_word_suffix=""
            )
        )
        split = SPLIT_REGEX.get(s["pre"])
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        tok.decoder = decoders.ByteLevel()
        control_ok = lambda t: set(t) <= alphabet  # noqa: E731  (llama.cpp mislabels some; transformers skips them)
    elif s["model"] == "llama":
        if merges is None:
            scores = md.get("tokenizer.ggml.scores")
            merges = _sentencepiece_merges(tokens, scores if scores is not None else [0.0] * len(tokens))
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
        )
        control_ok = lambda t: True  # noqa: E731
    else:
        raise UnsupportedFormatError(
            f"tokenizer.ggml.model {s['model']!r} is not supported (supported: gpt2, llama)",
            file=f.path,
            tensor="tokenizer.ggml.model",
        )
    special = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, types, strict=True)
        if ty == _CONTROL and control_ok(t)
    ]
    # The special tokens named by id (unk / bos / eos / pad) are matched whole too, as transformers'
    # wrapper registers them; llama.cpp types <unk> UNKNOWN (2), not CONTROL.
    named = {s[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")} - {None, *(t.content for t in special)}
    special += [AddedToken(t, normalized=False, special=True) for t in tokens if t in named]
    tok.add_special_tokens(special)
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty == _USER_DEFINED
    ]
    tok.add_tokens(user)
    # BOS / EOS around each sequence, as transformers' TokenizersBackend.update_post_processor writes them.
    bos, eos = s["bos_token"], s["eos_token"]
    add_bos, add_eos = s["add_bos_token"] and bos is not None, s["add_eos_token"] and eos is not None
    single = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
    pair = single + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos
    ids = {t: i for i, t in enumerate(tokens)}
    specials = [(t, ids[t]) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return tok


def load_tokenizer(path: str | os.PathLike):
    """A transformers `PreTrainedTokenizerFast` for a GGUF file (special tokens, chat template, BOS policy).

    Encodes and decodes like ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``.
    """
    from transformers import PreTrainedTokenizerFast

    f = GGUFFile(path)
    s = tokenizer_settings(f)
    kwargs = {k: s[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if s[k] is not None}
    kwargs.update(add_bos_token=s["add_bos_token"], add_eos_token=s["add_eos_token"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(f),
        chat_template=s["chat_template"],
        name_or_path=str(Path(path)),
        **kwargs,
    )
    return tok


def save_tokenizer(path: str | os.PathLike, folder: str | os.PathLike) -> list[Path]:
    """Writes the GGUF file's tokenizer as HF files (tokenizer.json, tokenizer_config.json, ...) into ``folder``.

    For canonical folders converted from a GGUF: afterwards ``AutoTokenizer.from_pretrained(folder)``
    needs neither the GGUF file nor jquant.

    Returns:
        the files written.
    """
    return [Path(p) for p in load_tokenizer(path).save_pretrained(str(folder))]
