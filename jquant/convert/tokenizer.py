"""The tokenizer that goes with a checkpoint source (HF or canonical folder, or a GGUF file)."""

from __future__ import annotations

import os

from jquant.convert import gguf_file_of

__all__ = ["load_tokenizer"]


def load_tokenizer(src: str | os.PathLike):
    """A transformers tokenizer for ``src``: rebuilt from GGUF metadata, or ``AutoTokenizer`` on the folder."""
    gguf = gguf_file_of(src)
    if gguf is not None:
        from jquant.convert.gguf_tokenizer import load_tokenizer as load_gguf_tokenizer

        return load_gguf_tokenizer(gguf)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src)
