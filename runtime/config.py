"""``RunConfig``: the options of one ``vlmedge run``, validated on construction (also importable from
``vlmedge.runtime.app``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vlmedge import protocol
from vlmedge.defaults import DEFAULT_QUERY, DEFAULT_SOURCE
from vlmedge.errors import ConfigError, did_you_mean
from vlmedge.validation import check_queries, check_threshold

RECORD_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi")


def _address(name: str, value: Any) -> str | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "off")):
        return None
    from vlmedge.runtime.messaging.sockets import check_address

    return check_address(str(value), purpose=name)


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
    record: str | Path | None = None  # write the overlay video here (.mp4 / .avi)
    publish: str | None = protocol.DEFAULT_PUB_ADDRESS  # PUB address; None disables publishing
    control: str | None = protocol.DEFAULT_CONTROL_ADDRESS  # REP address; None disables control
    heatmaps: bool = False  # also publish per-query heatmaps
    max_frames: int | None = None  # stop after this many processed frames
    threshold: float | None = None  # override the manifest's grounding threshold
    loop: bool = False  # restart file sources at their end
    realtime: bool = True  # pace files and synthetic scenes at their fps, like a camera; False: every
    # frame, each read when the loop is ready for it
    curve_keys: str | Path | None = None  # folder from `vlmedge keys DIR`: CURVE-encrypt both sockets
    providers: tuple[str, ...] | None = None  # ONNX Runtime providers; None = best for the bundle target
    ort_spinning: bool = True  # ONNX Runtime workers spin-wait during each encode (False: sleep; busy machines)
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
        _check_tristate("display", self.display, "auto")
        object.__setattr__(self, "publish", _address("RunConfig.publish", self.publish))
        object.__setattr__(self, "control", _address("RunConfig.control", self.control))
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or isinstance(self.max_frames, bool)
                                            or self.max_frames < 1):
            raise ConfigError(f"RunConfig.max_frames must be a positive int or None, got {self.max_frames!r}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold, "RunConfig.threshold"))
        self._check_paths()
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.print_interval_s is not None and not _seconds(self.print_interval_s, zero_ok=True):
            raise ConfigError(f"RunConfig.print_interval_s must be a >= 0 number of seconds, "
                              f"got {self.print_interval_s!r}")
        if not _seconds(self.status_interval_s, zero_ok=False):
            raise ConfigError(f"RunConfig.status_interval_s must be a positive number of seconds, "
                              f"got {self.status_interval_s!r}")

    def _check_paths(self) -> None:
        if self.taught is not None and not Path(self.taught).resolve().parent.is_dir():
            raise ConfigError(f"RunConfig.taught {str(self.taught)!r}: folder does not exist")
        if self.record is not None:
            if Path(self.record).suffix.lower() not in RECORD_EXTENSIONS:
                raise ConfigError(f"RunConfig.record {str(self.record)!r}: expected a .mp4 or .avi file name")
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
