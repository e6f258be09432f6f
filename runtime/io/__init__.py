"""Frames in: ``sources`` (``--source`` strings -> FrameSource), ``capture`` (a live source read
continuously: newest frame, watchdog, reconnect), ``reader`` (a file read one frame at a time, when
asked), ``frames`` (``Frame``, ``CaptureState`` and what the two readers share)."""
