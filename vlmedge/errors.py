"""Typed errors. Every message names the thing that is wrong and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VlmEdgeError(Exception):
    """Base class of every error vlmedge raises on purpose."""


class ConfigError(VlmEdgeError, ValueError):
    """An option, argument or configuration value is invalid."""


class InputError(VlmEdgeError, ValueError):
    """Data handed to an API (an image, token ids, a query) has the wrong type, shape or value."""


class ArtifactError(VlmEdgeError):
    """A file on disk (checkpoint, bundle, manifest, tokenizer) is missing, damaged or inconsistent."""


class BackendUnavailable(VlmEdgeError, RuntimeError):
    """An optional backend (torch, TensorRT, CUDA, GStreamer, a display) is not available here."""

    def __init__(self, what: str, hint: str = ""):
        self.what = what
        self.hint = hint
        super().__init__(f"{what} is not available" + (f": {hint}" if hint else ""))


class ProtocolError(VlmEdgeError, ValueError):
    """A message on a socket does not follow the documented vlmedge wire protocol."""


class SourceError(VlmEdgeError):
    """A frame source cannot be opened or has failed."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(field: str, value: str, choices: Iterable[str]) -> str:
    """Validate that ``value`` is one of ``choices``; raise ConfigError with a suggestion otherwise."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"unknown {field} {value!r}; expected one of {', '.join(map(repr, choices))}"
            + did_you_mean(value, choices)
        )
    return value
