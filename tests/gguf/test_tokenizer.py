"""Tokenizers rebuilt from GGUF metadata == transformers' ``AutoTokenizer.from_pretrained(dir, gguf_file=)``.

Covers a SentencePiece vocabulary without merges (tiny llama: merges derived from scores, byte
fallback, BOS added) and byte-level BPE with llama.cpp's ``qwen2`` pre-tokenizer (tiny qwen2/qwen3);
SmolLM2's real vocabulary is tested in test_default_model.py.
"""

from __future__ import annotations

import json
import warnings

import pytest

from jquant.convert.gguf_tokenizer import build_tokenizer, load_tokenizer
from jquant.core.errors import UnsupportedFormatError
from tests.fixtures.gguf_files import tiny_gguf

pytest.importorskip("transformers")

TEXTS = ["the cat sat on a mat", " hello  there\nnew line", "Ünïcödé ok 123 ☃", "</s><s>the<unk>", "", "<|im_start|>hi"]


@pytest.mark.parametrize("setup", ["llama", "qwen2", "qwen3"])
def test_matches_transformers(setup):
    from transformers import AutoTokenizer

    path, _ = tiny_gguf(setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    mine = load_tokenizer(path)
    assert json.loads(mine.backend_tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    raw = build_tokenizer(path)  # the plain `tokenizers` object, no transformers involved
    for text in TEXTS:
        ids = ref(text).input_ids
        assert mine(text).input_ids == ids == raw.encode(text).ids, text
        assert mine.decode(ids) == ref.decode(ids), text
        assert mine.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
        assert getattr(mine, attr) == getattr(ref, attr), attr
    if setup == "llama":  # SentencePiece files get BOS, byte fallback for unknown characters
        assert ref("the").input_ids[0] == 1 and "<0xE2>" in mine.convert_ids_to_tokens(mine("☃").input_ids)


def test_no_tokenizer_metadata(tmp_path):
    from tests.gguf.test_reader import gguf_bytes

    p = tmp_path / "bare.gguf"
    p.write_bytes(gguf_bytes())
    with pytest.raises(UnsupportedFormatError, match=r"bare\.gguf.*tokenizer\.ggml\.model.*no tokenizer metadata"):
        build_tokenizer(p)


def test_unsupported_tokenizer_model(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "t5.gguf"), arch="llama")
    w.add_tokenizer_model("t5")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedFormatError, match=r"tokenizer\.ggml\.model 't5' is not supported"):
        build_tokenizer(tmp_path / "t5.gguf")


def test_save_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    from jquant.convert.gguf_tokenizer import save_tokenizer

    path, _ = tiny_gguf("qwen3")
    files = save_tokenizer(path, tmp_path)
    assert (tmp_path / "tokenizer.json") in files
    back, mine = AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(path)
    for text in TEXTS:
        assert back(text).input_ids == mine(text).input_ids, text
    assert back.chat_template == mine.chat_template and back.eos_token == "<|im_end|>"
