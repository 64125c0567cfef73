"""jquant.nn: Flax NNX modules over canonical quantized weights.

`QuantLinear` and `QuantEmbed` hold a `QArray` (or a dense array) in a `QParam` and compute through
`jquant.ops`; `Weights` builds them from a checkpoint by HF name. No module here knows which
checkpoint format a weight came from.
"""

from jquant.nn.embed import QuantEmbed
from jquant.nn.linear import QParam, QuantLinear
from jquant.nn.norm import RMSNorm
from jquant.nn.weights import Weights, to_device

__all__ = ["QParam", "QuantEmbed", "QuantLinear", "RMSNorm", "Weights", "to_device"]
