"""jquant.quantize: online quantization of float checkpoints (numpy only, usable from the Torch bridge).

>>> ckpt = jquant.quantize("SmolLM2-bf16/", "fp8")        # Checkpoint with QArray linears
>>> jquant.save(ckpt, "smollm2-fp8/")                      # or: jquant convert SRC OUT --quantize fp8
>>> model = jquant.models.from_checkpoint(jquant.convert("SmolLM2-bf16/"), quantize="w4a16-g128")

Schemes (`scheme_names`; each reproduces a named producer where one runs on CPU, see `SCHEMES`):
``fp8``, ``fp8-channel``, ``fp8-block``, ``int8``, ``w8a16``, ``w4a16-g128``, ``w4a16-g128-asym``,
``nf4``, ``mxfp4``, ``mxfp4-a16``, ``fp6``. One file per quantizer family: `fp8`, `integer`,
`nf4`, `microfloat`; `scheme` holds the recipes and the registry; `checkpoint` the selection of
tensors and the eager / streaming checkpoint transforms.
"""

from jquant.quantize.checkpoint import (
    FORMAT,
    QuantizedWeights,
    Selection,
    dequantized,
    quantize,
    quantize_weight,
)
from jquant.quantize.scheme import SCHEMES, Scheme, WeightRecipe, get_scheme, register_scheme, scheme_names

__all__ = [
    "FORMAT",
    "SCHEMES",
    "QuantizedWeights",
    "Scheme",
    "Selection",
    "WeightRecipe",
    "dequantized",
    "get_scheme",
    "quantize",
    "quantize_weight",
    "register_scheme",
    "scheme_names",
]
