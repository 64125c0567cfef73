"""The tokenizer that goes with a checkpoint source (HF or canonical folder, or a GGUF file).

A GGUF file's tokenizer is rebuilt from its metadata with `tokenizers`. A folder's goes through
transformers' ``AutoTokenizer``: a ``tokenizer.json`` needs only `tokenizers`; a folder that ships
only a SentencePiece ``tokenizer.model`` (Llama-2-era GPTQ / AWQ repos) also needs
``sentencepiece`` (in the ``hf`` extra). Whatever is missing is reported as one `TokenizerError`
line naming what to install, never as a traceback from inside transformers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from jquant.convert import gguf_file_of
from jquant.core.errors import FormatError

__all__ = ["load_tokenizer", "end_token_ids", "TokenizerError", "INSTALL_HINT", "END_MARKERS"]

INSTALL_HINT = "pip install 'jquant[hf]'"


class TokenizerError(FormatError):
    """The tokenizer of a checkpoint cannot be built (a missing package, or no tokenizer files)."""


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def load_tokenizer(src: str | os.PathLike):
    """A transformers tokenizer for ``src``: rebuilt from GGUF metadata, or ``AutoTokenizer`` on the folder.

    Raises:
        TokenizerError: a package the tokenizer needs is missing (the message says which, and how to
            install it), or the folder holds no tokenizer transformers can read.
    """
    gguf = gguf_file_of(src)
    if gguf is not None:
        missing = [m for m in ("tokenizers", "transformers") if not _has(m)]
        if missing:
            raise TokenizerError(
                f"the GGUF tokenizer needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}", file=gguf
            )
        from jquant.convert.gguf_tokenizer import load_tokenizer as load_gguf_tokenizer

        return load_gguf_tokenizer(gguf)
    folder = Path(src)
    if not _has("transformers"):
        raise TokenizerError(
            f"reading the tokenizer needs transformers, which is not installed: {INSTALL_HINT}", file=folder
        )
    if (
        folder.is_dir()
        and not (folder / "tokenizer.json").exists()
        and (folder / "tokenizer.model").exists()
        and not _has("sentencepiece")
    ):
        raise TokenizerError(
            "this checkpoint ships only a SentencePiece tokenizer.model, which needs the sentencepiece package: "
            f"{INSTALL_HINT} (or pip install sentencepiece)",
            file=folder / "tokenizer.model",
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, ImportError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(
            f"cannot build the tokenizer ({type(e).__name__}: {first}); the folder needs tokenizer.json, or "
            f"tokenizer.model with sentencepiece installed ({INSTALL_HINT})",
            file=folder,
        ) from e


# Tokens that end an assistant turn in the chat templates of the supported families (ChatML / Qwen /
# SmolLM, Llama 3, Phi, Gemma, Llama 2 / Mistral): a model's end tokens when its template uses them.
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def end_token_ids(tokenizer, src: str | os.PathLike | None = None, config_eos=()) -> list[int]:
    """The ids that end a generation: config / tokenizer / generation_config EOS and the chat template's end token.

    Args:
        tokenizer: a transformers tokenizer (from `load_tokenizer`).
        src: the checkpoint folder, whose ``generation_config.json`` may list more EOS ids.
        config_eos: the model config's ``eos_token_id`` value(s).
    """
    ids: set[int] = set()

    def add(v):
        if v is None:
            return
        for i in v if isinstance(v, (list, tuple, set)) else (v,):
            if i is not None:
                ids.add(int(i))

    add(tuple(config_eos))
    add(getattr(tokenizer, "eos_token_id", None))
    gen_cfg = Path(src) / "generation_config.json" if src is not None and Path(src).is_dir() else None
    if gen_cfg is not None and gen_cfg.is_file():
        import json

        try:
            add(json.loads(gen_cfg.read_text()).get("eos_token_id"))
        except (ValueError, AttributeError):
            pass
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        add([vocab[m] for m in END_MARKERS if m in template and m in vocab])
    return sorted(ids)
