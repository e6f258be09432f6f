"""On-demand reader: reads the next frame of a file, image folder or synthetic scene only when asked.

For sources that are not live and not paced in real time: every frame, in order, none decoded in
vain, ``t_capture_ns`` stamped at the read rather than a frame before the consumer wanted it. Live
sources must be drained continuously instead (``capture.Capture``).

    with OnDemandReader(open_source("clip.mp4"), process=grounder.prepare) as reader:
        reader.request()                      # read + preprocess the next frame now, in the reader thread
        ...                                   # meanwhile: other work
        frame = reader.latest(after_id=last, timeout=0.1)   # frame.data: the preprocessed pixels
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from vlmedge.errors import ConfigError
from vlmedge.runtime.io.frames import CaptureState, FrameStream
from vlmedge.runtime.io.sources import FrameSource

log = logging.getLogger(__name__)


class OnDemandReader(FrameStream):
    """Reads one frame each time ``latest()`` or ``request()`` asks for one.

    process: a function applied to each image in the reader thread before the frame is handed over
    (``Frame.data``; the exception when it raises), e.g. the model's preprocessing: the consumer
    calls ``request()``, does other work, and ``latest()`` then returns a frame that was read and
    processed without another thread in between.
    """

    def __init__(self, source: FrameSource, *, process: Callable[[np.ndarray], Any] | None = None):
        super().__init__(source, "OnDemandReader")
        if source.is_live:
            raise ConfigError(f"OnDemandReader needs a file, image or synthetic source; {source.describe()} is "
                              "live and must be read continuously (use Capture)")
        self.process = process
        self._demand = False  # the consumer waits for a new frame
        self._reading = False  # the requested read is under way

    def request(self) -> None:
        """Start reading (and processing) the next frame now, without waiting for it; the next
        ``latest()`` returns it. No effect while a frame is unread."""
        with self._cond:
            if self._latest is None or self._latest.id <= self._consumed_id:
                self._ask()

    # ---------------------------------------------------------------------------------- internals
    def _begin(self) -> None:
        self._reader = threading.Thread(target=self._read_loop, name="vlmedge-reader", daemon=True)
        self._reader.start()

    def _ask(self) -> None:
        # a request while one is asked for or being read is the same request
        if not self._demand and not self._reading:
            self._demand = True
            self._cond.notify_all()

    def _on_frame(self) -> None:
        self._reading = False

    def _wait_for_demand(self) -> bool:
        """Block until a frame is asked for; False when stopped."""
        with self._cond:
            self._reading = False  # the previous read is over, whatever it returned
            while not self._demand:
                if self._stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._demand, self._reading = False, True
        return not self._stop.is_set()

    def _read_loop(self) -> None:
        src = self.source
        try:
            while self._wait_for_demand():
                try:
                    image, err = src.read(), None
                except Exception as e:
                    image, err = None, f"read() raised {type(e).__name__}: {e}"
                if self._stop.is_set():
                    return
                if image is None:
                    self._end(err)
                    return
                stamp = time.monotonic_ns(), time.time_ns()  # at the read, before processing
                data = None
                if self.process is not None:
                    try:
                        data = self.process(image)
                    except Exception as e:  # handed to the consumer, which decides (app.run re-raises it)
                        data = e
                self._publish(image, stamp, data)
        except Exception as e:  # a bug: fail loudly instead of leaving "running" forever
            log.exception("reader thread crashed")
            self.last_error = f"reader thread crashed: {type(e).__name__}: {e}"
            self._set_state(CaptureState.FAILED, self.last_error)
        finally:
            with self._close_lock:
                self._reader_exit_locked(src)


__all__ = ["OnDemandReader"]
