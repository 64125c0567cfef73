"""Tiny random HF decoders of each supported architecture, saved once (fixture cache), f32 weights."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.cache import cached_dir
from tests.fixtures.tiny_llama import TINY, save_tiny_tokenizer

# Per architecture: the transformers classes and config overrides that exercise its variant.
ARCHS = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64),
    )),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=96, tie_word_embeddings=True)),
}  # fmt: skip


def make_hf_model(arch: str, seed: int = 0):
    """A random transformers model of ``arch`` (f32, eval mode)."""
    import torch
    import transformers

    cfg_cls, model_cls, over = ARCHS[arch]
    cfg = getattr(transformers, cfg_cls)(**{**TINY, **over})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # random norms too, so that a missed RMSNorm weight shows up
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def hf_dir(arch: str) -> Path:
    """Folder with the saved model (safetensors f32 + config + tokenizer), built once."""
    import transformers

    def build(folder: Path):
        make_hf_model(arch).save_pretrained(folder)
        save_tiny_tokenizer(folder)

    return cached_dir(f"hf-tiny-{arch}-transformers{transformers.__version__}", build)
