"""Validators for values that cross a boundary: options, public API arguments, wire messages. Torch-free.

One rule per kind of value. Each boundary passes the name of the field and the error type its callers
expect, so a bad value reads the same everywhere ("<where> must be ..., got <value>"):

    check_threshold(0.3, "RunConfig.threshold")                               # ConfigError (an option)
    check_threshold(v, "op 'set_threshold': field 'value'", error=ProtocolError)  # a wire request
    check_threshold("0.3", "threshold", error=argparse.ArgumentTypeError, text=True)  # a command line
    check_queries(["the red cup"], error=InputError)                          # an API argument

Values inside the runtime (targets, results) are not re-validated: they are built from checked inputs.
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmedge.errors import ConfigError, InputError

_SHOWN_CHARS = 60  # a wire request may be 64 KiB; an error message quotes only its start


def _show(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= _SHOWN_CHARS else r[:_SHOWN_CHARS - 3] + "..."


def _number(value: Any, text: bool) -> float | int | None:
    """``value`` if it is a real number (Python or numpy, not a bool), parsed from text when ``text``; else None."""
    if text and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return value if real else None


def check_threshold(value: Any, where: str = "threshold", *, error: type[Exception] = ConfigError,
                    text: bool = False) -> float:
    """A probability threshold: a real number in [0, 1] -> float.

    Python and numpy ints and floats are accepted; bools are refused (``True`` is not a probability) and
    NaN fails the range check. Text is parsed only with ``text=True`` (a command-line argument): on the
    wire ``"0.5"`` is a client bug, not a number. ``error`` is what the boundary raises: ConfigError for
    options, InputError for API arguments, ProtocolError for messages, argparse.ArgumentTypeError for a CLI.
    """
    number = _number(value, text)
    real = number is not None
    if not real or not 0.0 <= number <= 1.0:
        raise error(f"{where} must be a number in [0, 1], got {_show(value)}")
    return float(number)


def check_positive(value: Any, where: str, *, upper: float, error: type[Exception] = ConfigError,
                   text: bool = True) -> float:
    """A real number in (0, ``upper``] -> float (a rate, a temperature): bools refused, text parsed when
    ``text`` (option strings such as ``?fps=30``), NaN and infinities fail the range check."""
    number = _number(value, text)
    real = number is not None
    if not real or not 0.0 < number <= upper:
        raise error(f"{where} must be in (0, {upper:g}], got {_show(value)}")
    return float(number)


MAX_QUERIES = 16  # queries active at once (the API's and the control socket's default limit)
MAX_QUERY_CHARS = 200  # CLIP's text context is 77 tokens; longer text would be truncated anyway
# Bidirectional formatting characters: with them a query displays other than it reads (an operator reviewing
# the active commands would see something else than what is grounded), so no boundary accepts them.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class QueryRules:
    """What a boundary asks of query text beyond "a non-empty string". The character rule is the same
    everywhere (see :func:`check_query`); the limits may differ per boundary."""

    normalize: bool = False  # collapse whitespace runs to one space (typed text that travels on the wire)
    max_count: int | None = None  # most queries in one list
    max_chars: int | None = None  # longest query (after normalizing)
    hint: str = ""  # appended to a limit error: how to raise the limit where that is possible

    def __post_init__(self):
        for name in ("max_count", "max_chars"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"QueryRules.{name} must be a positive int or None, got {_show(v)}")

    def limited(self, *, max_count: Any = MAX_QUERIES, max_chars: Any = MAX_QUERY_CHARS,
                where: str = "", hint: str = "") -> QueryRules:
        """These rules with other limits (``where`` names the options in the error, e.g. "Grounder")."""
        for name, v in (("max_queries", max_count), ("max_query_chars", max_chars)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{where + '.' if where else ''}{name} must be a positive int, got {_show(v)}")
        return QueryRules(self.normalize, max_count, max_chars, hint)


ANY_TEXT = QueryRules()  # any non-empty text without control characters, kept as given; no limits
# The Python API (Grounder): text kept as given (it is what the caller looks up in results), the limits of the
# control socket. Grounder(max_queries=..., max_query_chars=...) changes them.
API_RULES = QueryRules(max_count=MAX_QUERIES, max_chars=MAX_QUERY_CHARS)


def _bad_character(text: str) -> str | None:
    """Why ``text`` cannot be a query, or None. Refused: control characters other than whitespace (NUL,
    escape sequences), lone surrogates (not text: no encoder can write them) and bidirectional formatting
    characters. Accepted: every other character, zero-width joiners included (emoji sequences)."""
    if text.isascii():
        for i, ch in enumerate(text):
            if (ch < " " or ch == "\x7f") and not ch.isspace():
                return f"contains control characters (U+{ord(ch):04X} at {i})"
        return None
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat == "Cc" and not ch.isspace():
            return f"contains control characters (U+{ord(ch):04X} at {i})"
        if cat == "Cs":
            return f"contains a lone surrogate (U+{ord(ch):04X} at {i}), which is not text"
        if ch in BIDI_CONTROLS:
            return (f"contains a bidirectional formatting character (U+{ord(ch):04X} at {i}): the text would "
                    "display other than it reads")
    return None


def check_query(query: Any, where: str = "query", *, error: type[Exception] = InputError,
                rules: QueryRules = ANY_TEXT) -> str:
    """One query -> the text to use (normalized when ``rules.normalize``). The same character rule on every
    boundary (see ``_bad_character``); the limits of ``rules``."""
    if not isinstance(query, str):
        raise error(f"{where} must be a string, got {type(query).__name__} {_show(query)}")
    limit = rules.max_chars
    if limit is not None and not rules.normalize and len(query) > limit:  # before any work on a huge text
        raise error(f"{where} is {len(query)} characters long; the limit is {limit}{rules.hint}")
    text = " ".join(query.split()) if rules.normalize else str(query)
    if not text.strip():
        raise error(f"{where} is empty (got {_show(query)})")
    if limit is not None and len(text) > limit:
        raise error(f"{where} is {len(text)} characters long; the limit is {limit}{rules.hint}")
    bad = _bad_character(text)
    if bad is not None:
        raise error(f"{where} {bad}: {_show(text[:40])}")
    return text


def _as_sequence(queries: Any) -> Sequence | None:
    """A sequence of queries as given, a 1-D numpy array of them included (None: not a sequence)."""
    if isinstance(queries, np.ndarray):
        return list(queries) if queries.ndim == 1 else None
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        return None
    return queries


def check_queries(queries: Any, where: str = "queries", *, error: type[Exception] = InputError,
                  rules: QueryRules = ANY_TEXT) -> tuple[str, ...]:
    """A sequence of distinct queries (a list, a tuple, a 1-D numpy array of str...), each checked by
    :func:`check_query` -> tuple of their texts (plain ``str``)."""
    seq = _as_sequence(queries)
    if seq is None:
        raise error(f"{where} must be a list of strings, got {type(queries).__name__} {_show(queries)}")
    if rules.max_count is not None and len(seq) > rules.max_count:
        raise error(f"{where} has {len(seq)} entries; the limit is {rules.max_count}{rules.hint}")
    out = tuple(check_query(q, f"{where}[{i}]", error=error, rules=rules) for i, q in enumerate(seq))
    dupes = sorted(q for q, n in Counter(out).items() if n > 1)
    if dupes:
        raise error(f"{where} has duplicates {dupes}; each query must be distinct")
    return out


# ----------------------------------------------------------------------------- sources and paths

MAX_CAMERA_INDEX = 9999  # far beyond any /dev/videoN; larger numbers overflow the driver's int
MAX_SEED = 2**63 - 1  # the seeds numpy's generators take, as a signed 64-bit JSON/CLI-friendly integer
MAX_FRAME_SIDE = 8192  # an 8K frame; a larger synthetic or resized frame would need gigabytes per copy
NAME_MAX = 255  # bytes in one path component (Linux, macOS, Windows)
PATH_MAX = 4095  # bytes in a whole path (Linux)


def check_camera_index(text: str, where: str = "source", *, error: type[Exception] = ConfigError) -> int:
    """A camera index given as digits -> int in [0, MAX_CAMERA_INDEX]."""
    if not text.isdigit() or len(text) > len(str(MAX_CAMERA_INDEX)) or int(text) > MAX_CAMERA_INDEX:
        raise error(f"{where}: camera index {_show(text)} is out of range; expected 0..{MAX_CAMERA_INDEX} "
                    "(/dev/videoN is camera N)")
    return int(text)


def check_seed(value: Any, where: str = "seed", *, error: type[Exception] = ConfigError) -> int:
    """A random seed: an int in [0, 2**63 - 1]."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise error(f"{where} must be an integer in 0..{MAX_SEED}, got {_show(value)}")
    return int(value)


def check_frame_size(size: tuple[int, int], where: str = "size", *,
                     error: type[Exception] = ConfigError) -> tuple[int, int]:
    """A frame size (height, width), each side in [1, MAX_FRAME_SIDE] pixels."""
    for name, v in zip(("height", "width"), size):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= MAX_FRAME_SIDE:
            raise error(f"{where}: {name} {_show(v)} must be 1..{MAX_FRAME_SIDE} pixels")
    return int(size[0]), int(size[1])


def check_path_name(path: Any, where: str = "path", *, error: type[Exception] = ConfigError) -> str:
    """A file or folder name the operating system can take: no NUL, no component longer than NAME_MAX
    bytes, no path longer than PATH_MAX bytes (else an OSError or ValueError deep in a library)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise error(f"{where} {_show(text)} contains a NUL character, which no file name can hold")
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError as e:
        raise error(f"{where} {_show(text)} cannot be written as a file name here ({e.reason})") from None
    if len(raw) > PATH_MAX:
        raise error(f"{where} is {len(raw)} bytes long; the limit is {PATH_MAX} ({_show(text)})")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            raise error(f"{where}: the name {_show(os.fsdecode(part))} is {len(part)} bytes long; the file system "
                        f"limit is {NAME_MAX} per name")
    return text
