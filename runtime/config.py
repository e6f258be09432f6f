"""``RunConfig``: the options of one ``vlmedge run``, validated on construction (also importable from
``vlmedge.runtime.app``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vlmedge import protocol
from vlmedge.defaults import DEFAULT_QUERY, DEFAULT_SOURCE
from vlmedge.errors import ConfigError, did_you_mean
from vlmedge.validation import check_path_name, check_queries, check_threshold

RECORD_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mcap")  # .mcap: a ROS 2 bag (runtime/recording), else video


def _address(name: str, value: Any) -> str | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "off")):
        return None
    from vlmedge.runtime.messaging.sockets import check_address

    return check_address(str(value), purpose=name)


def _web_address(value: Any) -> str | None:
    """The browser view's address, normalized to HOST:PORT (the server warns when it is not loopback)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    from vlmedge.runtime.web import format_web_address, parse_web_address

    return format_web_address(*parse_web_address(value, warn=False))


def _check_tristate(name: str, value: Any, none_means: str | None) -> None:
    if value not in ((None, True, False) if none_means else (True, False)):
        allowed = f"None ({none_means}), True or False" if none_means else "True or False"
        raise ConfigError(f"RunConfig.{name} must be {allowed}, got {value!r}")


def _check_commands(queries: tuple[str, ...]) -> None:
    """Every initial query must read as a command: a malformed one fails here, not on the first frame."""
    from vlmedge.language import CommandSyntaxError, read_command

    for q in queries:
        try:
            read_command(q)
        except CommandSyntaxError as e:
            raise ConfigError(f"RunConfig.queries: {e}") from None


@dataclass(frozen=True)
class RunConfig:
    """Options of one ``run``. Validated on construction (ConfigError naming the field)."""

    source: Any = DEFAULT_SOURCE  # source spec (synthetic://tabletop, file://clip.mp4, 0, csi://0...) or a FrameSource
    bundle: str | Path | None = None  # bundle directory; None = the embedded int8 demo bundle
    queries: tuple[str, ...] = (DEFAULT_QUERY,)  # initial commands (changeable over the control socket)
    display: bool | None = None  # live window: None = when a display exists, True = required, False = headless
    record: str | Path | None = None  # write the overlay video here (.mp4 / .avi), or a ROS 2 bag (.mcap)
    web: str | None = None  # serve the browser view at HOST:PORT ("127.0.0.1:8080"; port 0: any free one); None: off
    publish: str | None = protocol.DEFAULT_PUB_ADDRESS  # PUB address; None disables publishing
    control: str | None = protocol.DEFAULT_CONTROL_ADDRESS  # REP address; None disables control
    heatmaps: bool = False  # also publish per-query heatmaps
    max_frames: int | None = None  # stop after this many processed frames
    threshold: float | None = None  # override the manifest's grounding threshold
    loop: bool | int = False  # rewind files/image folders at their end: True or -1 forever, N: N times
    realtime: bool = True  # pace files and synthetic scenes at their fps, like a camera; False: every
    # frame, each read when the loop is ready for it
    # The source (see runtime/io/sources.py and capture.py): how it is read, and how a live one is waited for.
    input_size: str | tuple[int, int] | None = None  # 'WIDTHxHEIGHT' or (h, w); GStreamer streams scale in the pipeline
    input_rate: float | None = None  # network streams: at most this many frames/s (cameras: the rate asked for)
    input_flip: str | None = None  # turn every frame: one of sources.FLIPS (jetson-utils' --input-flip names)
    input_codec: str | None = None  # what an rtp:// stream carries: h264, h265, vp8, vp9, mjpeg (default h264)
    rtsp_latency_ms: int | None = None  # RTSP/RTP jitter buffer, GStreamer only (None: 200 ms)
    stall_timeout_s: float = 2.0  # a live source without a new frame this long is reconnected
    reconnect_backoff_s: tuple[float, float] = (0.25, 2.0)  # first and longest wait between (re)connect attempts
    max_reconnects: int | None = None  # consecutive failed (re)connects before the run ends failed; None: never
    open_timeout_s: float = 10.0  # one open() of a live source taking longer is abandoned and retried
    fail_fast: bool = False  # a live source that cannot be opened at start ends the run at once (no retry)
    behind_s: float = 1.0  # status says `behind` when frames are grabbed this much later than the camera took them
    curve_keys: str | Path | None = None  # folder from `vlmedge keys DIR`: CURVE-encrypt both sockets
    providers: tuple[str, ...] | None = None  # ONNX Runtime providers; None = best for the bundle target
    # ONNX Runtime workers spin-wait during each encode (True: up to 1.4x faster on an idle machine, 2-2.6x slower
    # beside one busy process, against 1.1-1.4x without: benchmarks/contention.py); False (default): they sleep
    ort_spinning: bool = False
    # Where the encoders run: "auto" (a TensorRT engine from build-engine when one fits, else the faster of ONNX
    # Runtime and OpenVINO on this CPU, measured once and cached), "onnxruntime", "openvino", "tensorrt";
    # None = $VLMEDGE_BACKEND when set, else "auto"
    backend: str | None = None
    text_idle_s: float | None = 60.0  # release the text encoder after this long unused (None: keep it loaded)
    # resident MB --backend auto keeps the process within ("none": speed alone); None = $VLMEDGE_MEMORY_BUDGET_MB,
    # else 350
    memory_budget_mb: float | str | None = None
    print_interval_s: float | None = 0.5  # headless: print targets at most this often (0: every frame, None: never)
    status_interval_s: float = 1.0  # status heartbeat period
    smoothing: bool = True  # temporal smoothing + stable track ids
    # Preprocess the newest frame in its own thread while the encoder runs (throughput = max of the two
    # stages instead of their sum). None = when this machine has CPU cores beyond the encoder's threads.
    prefetch: bool | None = None
    # Taught objects (`vlmedge send teach NAME x0 y0 x1 y1`) are kept in this JSON file, loaded at start and
    # rewritten on every teach/forget, so a restart keeps them; None keeps them for this run only.
    taught: str | Path | None = None

    def __post_init__(self):
        from vlmedge.runtime.io.sources import FrameSource

        if not isinstance(self.source, FrameSource) and (not isinstance(self.source, str) or not self.source.strip()):
            raise ConfigError(f"RunConfig.source must be a source spec like 'synthetic://tabletop', '0' or "
                              f"'file://clip.mp4' (or a FrameSource), got {self.source!r}")
        qs = (self.queries,) if isinstance(self.queries, str) else self.queries
        # the rules of the wire: the control socket may replace these queries later
        object.__setattr__(self, "queries", check_queries(qs or (), "RunConfig.queries", error=ConfigError,
                                                          rules=protocol.QUERY_RULES))
        _check_commands(self.queries)
        _check_tristate("prefetch", self.prefetch, "auto")
        _check_tristate("ort_spinning", self.ort_spinning, None)
        self._check_backend()
        _check_tristate("display", self.display, "auto")
        object.__setattr__(self, "publish", _address("RunConfig.publish", self.publish))
        object.__setattr__(self, "control", _address("RunConfig.control", self.control))
        object.__setattr__(self, "web", _web_address(self.web))
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or isinstance(self.max_frames, bool)
                                            or self.max_frames < 1):
            raise ConfigError(f"RunConfig.max_frames must be a positive int or None, got {self.max_frames!r}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold, "RunConfig.threshold"))
        self._check_paths()
        from vlmedge.runtime.feeds import check_source_options

        for name, value in check_source_options(self).items():
            object.__setattr__(self, name, value)
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.print_interval_s is not None and not _seconds(self.print_interval_s, zero_ok=True):
            raise ConfigError(f"RunConfig.print_interval_s must be a >= 0 number of seconds, "
                              f"got {self.print_interval_s!r}")
        if not _seconds(self.status_interval_s, zero_ok=False):
            raise ConfigError(f"RunConfig.status_interval_s must be a positive number of seconds, "
                              f"got {self.status_interval_s!r}")

    def _check_backend(self) -> None:
        from vlmedge.runtime.grounding.backends import BACKENDS

        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"RunConfig.backend must be one of {list(BACKENDS)} or None, got {self.backend!r}"
                              + did_you_mean(str(self.backend), BACKENDS))
        if self.memory_budget_mb is not None:
            from vlmedge.runtime.grounding.backends import memory_budget

            memory_budget(self.memory_budget_mb)  # a ConfigError naming the value, before anything starts
        t = self.text_idle_s
        if t is not None and not _seconds(t, zero_ok=True):
            raise ConfigError(f"RunConfig.text_idle_s must be a >= 0 number of seconds or None, got {t!r}")

    def _check_paths(self) -> None:
        for name in ("bundle", "record", "taught", "curve_keys"):  # names the OS refuses: an error, not an OSError
            value = getattr(self, name)
            if isinstance(value, (str, Path)):
                check_path_name(value, f"RunConfig.{name}")
        if self.taught is not None and not Path(self.taught).resolve().parent.is_dir():
            raise ConfigError(f"RunConfig.taught {str(self.taught)!r}: folder does not exist")
        if self.record is not None:
            if Path(self.record).suffix.lower() not in RECORD_EXTENSIONS:
                raise ConfigError(f"RunConfig.record {str(self.record)!r}: expected a .mp4 or .avi video, or a "
                                  ".mcap ROS 2 bag")
            if not Path(self.record).resolve().parent.is_dir():
                raise ConfigError(f"RunConfig.record {str(self.record)!r}: folder does not exist")
        if self.curve_keys is not None and not Path(self.curve_keys).is_dir():
            raise ConfigError(f"RunConfig.curve_keys {str(self.curve_keys)!r} is not a folder; "
                              "make one with `vlmedge keys DIR`")

    @classmethod
    def from_dict(cls, options: dict) -> RunConfig:
        """Build from a dict, refusing unknown keys with a did-you-mean suggestion."""
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                raise ConfigError(f"unknown run option {key!r}; expected one of {known}" + did_you_mean(key, known))
        return cls(**options)

    def replace(self, **changes) -> RunConfig:
        """A copy with some options changed (same validation as from_dict)."""
        return RunConfig.from_dict({**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def _seconds(value: Any, *, zero_ok: bool) -> bool:
    return isinstance(value, (int, float)) and not (value < 0 or (value == 0 and not zero_ok))


__all__ = ["RunConfig"]
