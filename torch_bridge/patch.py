"""Run a converted checkpoint in a transformers model: `patch_model` and `from_checkpoint`.

`patch_model` walks ``Checkpoint.weights`` by HF name: every quantized linear weight replaces its
``nn.Linear`` by a `QuantLinear` (the bias moves over), every plain array is copied into the
matching parameter or buffer, and an activation recipe (``<module>.input_quant``, a
`jquant.core.activation.ActQuant` of W8A8 / FP8 / FP4 checkpoints) goes to its layer, which then
quantizes its inputs as the checkpoint specifies. A quantized embedding table (GGUF quantizes ``token_embd``) is
dequantized into its ``nn.Embedding`` (a row gather needs no matmul kernel; the table is the one
weight stored dense). Names the model does not have are an error, never silently dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from jquant.core.activation import ActQuant
from jquant.core.errors import ConfigError
from jquant.core.qarray import QArray
from torch_bridge.dequant import dequantize
from torch_bridge.linear import QuantLinear
from torch_bridge.tensor import as_tensor, to_torch

__all__ = ["patch_model", "from_checkpoint", "PatchReport"]


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
    # Pass 1: quantized weights replace their modules (a replaced Linear keeps its bias parameter).
    for name, w in weights.items():
        if isinstance(w, ActQuant):
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
        if target is None:
            report["unknown"].append(name)
            continue
        _copy_into(target, as_tensor(np.asarray(weights[name])), name)
        report["dense"].append(name)
    if strict and report["unknown"]:
        raise ConfigError(f"the model has no parameter for {len(report['unknown'])} checkpoint tensors",
                          tensor=report["unknown"][0])  # fmt: skip
    return report


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
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**cfg)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in _weights(ckpt):
        config.tie_word_embeddings = False  # the checkpoint has its own (maybe quantized) head
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.jquant_patch_report = patch_model(
        model, ckpt, act_quant=act_quant, implementation=implementation, device=device, strict=strict
    )
    return model.eval()
