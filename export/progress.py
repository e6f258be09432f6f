"""Progress bars for the long steps of ``export``, ``verify`` and ``train-demo`` (tqdm, on stderr).

Drawn when stderr is a terminal, or always with ``VLMEDGE_PROGRESS=1`` (never with ``0``), so that logs
and CI output stay free of carriage-return noise. Two kinds:

- :func:`bar`: a counted loop (calibration frames, training steps, scenes rendered).
- :func:`activity`: one opaque call (a trace, an ONNX Runtime optimization, a checkpoint load): a line with
  the step's name and its elapsed time, refreshed by a thread until the call returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from tqdm import tqdm

ENV = "VLMEDGE_PROGRESS"


def enabled() -> bool:
    """``VLMEDGE_PROGRESS`` = 1 / 0 forces bars on / off; otherwise they are drawn on a terminal only."""
    value = os.environ.get(ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable=None, *, total: int | None = None, desc: str, unit: str = "it", leave: bool = False) -> tqdm:
    """A tqdm bar on stderr (a no-op object when progress is off)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not enabled(), file=sys.stderr,
                dynamic_ncols=True, mininterval=0.25)


@contextlib.contextmanager
def activity(desc: str, every: float = 0.5):
    """Show ``desc`` and its elapsed time while the body runs (no total: one opaque call)."""
    if not enabled():
        yield None
        return
    line = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", leave=False, file=sys.stderr,
                dynamic_ncols=True)
    stop = threading.Event()

    def tick():
        while not stop.wait(every):
            line.refresh()

    thread = threading.Thread(target=tick, name=f"progress:{desc}", daemon=True)
    thread.start()
    try:
        yield line
    finally:
        stop.set()
        thread.join()
        line.close()


def redirect_logging():
    """Context manager: log records go through ``tqdm.write`` so that they do not tear the bars."""
    if not enabled():
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
