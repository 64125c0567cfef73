"""Errors raised for input jquant cannot read.

Every error names the file, the tensor and the problem, so that a user can find the bad byte
range without a debugger. Nothing in jquant turns a bad input into a wrong answer.
"""

from __future__ import annotations

__all__ = ["FormatError", "CorruptFileError", "UnsupportedFormatError", "ConfigError"]


class FormatError(ValueError):
    """A checkpoint (file, tensor or config) that jquant cannot convert.

    Attributes:
        file: the file the problem was found in, or None.
        tensor: the tensor (or config key) at fault, or None.
        problem: what is wrong, in words.
    """

    def __init__(self, problem: str, *, file: object = None, tensor: str | None = None):
        self.file = None if file is None else str(file)
        self.tensor = tensor
        self.problem = problem
        where = ", ".join(
            p for p in (f"file {self.file}" if self.file else "", f"tensor {tensor!r}" if tensor else "") if p
        )
        super().__init__(f"{where}: {problem}" if where else problem)

    def with_file(self, file: object) -> FormatError:
        """The same error naming ``file`` when it named none (callers that know the file add it)."""
        if self.file is not None or file is None:
            return self
        return type(self)(self.problem, file=file, tensor=self.tensor)


class CorruptFileError(FormatError):
    """Bytes on disk that do not parse: truncated files, bad headers, offsets out of range."""


class UnsupportedFormatError(FormatError):
    """A well-formed input that jquant does not (yet) handle: unknown type, bits, architecture."""


class ConfigError(FormatError):
    """A quantization config that is missing, contradictory, or disagrees with the tensors."""
