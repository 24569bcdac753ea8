"""User-facing errors.

Everything a user can get wrong (a model name, a weight, a prompt) raises a
:class:`UniteError` subclass whose message names the problem.  The CLI turns these
into a one-line message and a distinct exit code instead of a traceback; the server
turns them into OpenAI-style error bodies.  Bugs stay ordinary exceptions.
"""

from __future__ import annotations


class UniteError(Exception):
    """Base class of errors caused by user input, not by a bug."""

    exit_code = 2
    http_status = 400


class ModelNotFoundError(UniteError):
    """An alias that is not known, or a model file that does not exist."""

    exit_code = 3
    http_status = 404


class ModelFileError(ModelNotFoundError):
    """A model file that exists but cannot be loaded: not a GGUF file, empty or truncated.

    Same exit code as a missing file: either way the model named cannot be used.
    """


class ContextLengthError(UniteError):
    """A prompt that does not fit a member's context window."""

    exit_code = 4
    http_status = 400


class InvalidConfigError(UniteError):
    """A bad generation or ensemble setting (k, weights, temperature, ...)."""

    exit_code = 2
    http_status = 400


class InvalidInputError(UniteError):
    """Input data that cannot be used as given, e.g. bytes that are not UTF-8."""

    exit_code = 2
    http_status = 400


def as_utf8(text: str | bytes, what: str = "prompt", error: type[UniteError] = InvalidInputError) -> bytes:
    """The one encoding rule for user text (prompts, stop strings, messages): UTF-8 bytes, or
    ``error`` naming ``what`` for a lone surrogate (undecodable argv bytes arrive as those) or
    bytes that are not UTF-8, never a ``UnicodeError`` from deep inside."""
    if isinstance(text, bytes):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{what} is not valid UTF-8 (byte 0x{text[err.start]:02X} at offset {err.start})") from None
        return text
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates, e.g. from undecodable argv bytes
        raise error(f"{what} is not valid UTF-8 (undecodable character at offset {err.start})") from None
