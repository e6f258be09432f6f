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


@dataclass(frozen=True)
class QueryRules:
    """What a boundary asks of query text beyond "a non-empty string"."""

    normalize: bool = False  # collapse whitespace runs to one space, refuse control characters (typed text)
    max_count: int | None = None  # most queries in one list
    max_chars: int | None = None  # longest query (after normalizing)


ANY_TEXT = QueryRules()  # the Python API: any non-empty text, kept as given (it is what the caller looks up)


def check_query(query: Any, where: str = "query", *, error: type[Exception] = InputError,
                rules: QueryRules = ANY_TEXT) -> str:
    """One query -> the text to use (normalized when ``rules.normalize``)."""
    if not isinstance(query, str):
        raise error(f"{where} must be a string, got {type(query).__name__} {_show(query)}")
    text = " ".join(query.split()) if rules.normalize else query
    if not text.strip():
        raise error(f"{where} is empty (got {_show(query)})")
    if rules.max_chars is not None and len(text) > rules.max_chars:
        raise error(f"{where} is {len(text)} characters long; the limit is {rules.max_chars}")
    if rules.normalize and not text.isprintable():
        raise error(f"{where} contains control characters: {text[:40]!r}")
    return text


def check_queries(queries: Any, where: str = "queries", *, error: type[Exception] = InputError,
                  rules: QueryRules = ANY_TEXT) -> tuple[str, ...]:
    """A list of distinct queries (each checked by :func:`check_query`) -> tuple of their texts."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise error(f"{where} must be a list of strings, got {type(queries).__name__} {_show(queries)}")
    if rules.max_count is not None and len(queries) > rules.max_count:
        raise error(f"{where} has {len(queries)} entries; the limit is {rules.max_count}")
    out = tuple(check_query(q, f"{where}[{i}]", error=error, rules=rules) for i, q in enumerate(queries))
    dupes = sorted(q for q, n in Counter(out).items() if n > 1)
    if dupes:
        raise error(f"{where} has duplicates {dupes}; each query must be distinct")
    return out
