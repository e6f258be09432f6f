"""Argument types and options that several ``vlmedge`` commands share: each defined, and its help written, once.

Light on purpose (argparse and small core modules only): every command module imports it while the parser is
built, and ``vlmedge --help`` must not pay for onnxruntime, OpenCV or torch.
"""

from __future__ import annotations

import argparse

from vlmedge.defaults import DEFAULT_QUERY
from vlmedge.validation import check_threshold

# ---------------------------------------------------------------------------------------------------- types
# argparse calls these on the option's text; an ArgumentTypeError becomes "argument --x: <message>" and exit 2.


def positive_int(text: str) -> int:
    """An integer >= 1 (frame counts: zero would mean "measure nothing")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (probability thresholds), by the one threshold rule of ``vlmedge.validation``."""
    return check_threshold(text, "value", error=argparse.ArgumentTypeError, text=True)


# -------------------------------------------------------------------------------------------------- options


def add_bundle_option(parser: argparse.ArgumentParser) -> None:
    """``--bundle/-b DIR``, None when not given: the handler resolves the embedded demo bundle then."""
    parser.add_argument("--bundle", "-b", default=None,
                        help="bundle directory (default: the embedded int8 tabletop demo bundle)")


def add_query_option(parser: argparse.ArgumentParser) -> None:
    """``--query/-q TEXT``, repeatable, into ``args.queries``; read it back with :func:`queries_from`."""
    parser.add_argument("--query", "-q", action="append", dest="queries", metavar="TEXT",
                        help=f"a command to ground; repeat for several (default: {DEFAULT_QUERY!r})")


def queries_from(args: argparse.Namespace) -> tuple[str, ...]:
    """The queries given with ``--query``, or the default one. The default is applied here rather than as the
    option's default because argparse appends to a list default instead of replacing it."""
    return tuple(args.queries or (DEFAULT_QUERY,))


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """How the encoders run: ``--backend``, ``--text-idle``, ``--providers``, ``--prefetch``, ``--ort-spinning``
    (run and bench)."""
    g = parser.add_argument_group("encoder execution")
    g.add_argument("--providers", nargs="+", default=None, metavar="EP",
                   help="ONNX Runtime execution providers (default: best available for the bundle target)")
    g.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="preprocess the next frame in its own thread while the encoder runs "
                        "(default: when there are spare CPU cores or a GPU provider)")
    g.add_argument("--backend", choices=("auto", "onnxruntime", "openvino", "tensorrt"), default=None,
                   help="where the encoders run (default: $VLMEDGE_BACKEND, else auto: the TensorRT engine from "
                        "`vlmedge build-engine` when one fits this TensorRT and GPU, else the faster of ONNX Runtime "
                        "and OpenVINO for this bundle on this CPU, measured once and cached; the log says which "
                        "and why). openvino needs `pip install \"vlmedge[openvino]\"`")
    g.add_argument("--memory-budget", dest="memory_budget_mb", default=None, metavar="MB",
                   help="resident memory --backend auto keeps the process within: OpenVINO, when faster, is chosen "
                        "only if it fits where ONNX Runtime would ('none': the faster one, whatever it takes; "
                        "default: $VLMEDGE_MEMORY_BUDGET_MB, else 350)")
    g.add_argument("--text-idle", dest="text_idle_s", type=_idle_seconds, default=60.0, metavar="S",
                   help="release the text encoder after S seconds without a new text ('never': keep it; default 60); "
                        "it is loaded only when a query is not in the bundle's vocabulary or the cache")
    g.add_argument("--ort-spinning", action=argparse.BooleanOptionalAction, default=False,
                   help="ONNX Runtime worker threads spin-wait while an encode runs and stop when it returns: "
                        "up to 1.4x faster on an idle machine, 2-2.6x slower beside one busy process (off: 1.1-1.4x) "
                        "(default: off, what degrades least; benchmarks/contention.py measures both)")


def _idle_seconds(text: str) -> float | None:
    """Seconds >= 0, or 'never' (None)."""
    if text.strip().lower() in ("never", "none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 or 'never', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 or 'never', got {text!r}")
    return value


def providers_from(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--providers`` as a tuple, None for "best available"."""
    return tuple(args.providers) if args.providers else None


# --------------------------------------------------------------------------------------------- the source

FLIP_NAMES = ("none", "counterclockwise", "rotate-180", "clockwise", "horizontal", "upper-right-diagonal",
              "vertical", "upper-left-diagonal")  # runtime/io/sources.FLIPS (not imported: it needs OpenCV)
CODEC_NAMES = ("h264", "h265", "vp8", "vp9", "mjpeg")  # runtime/io/sources.CODECS


def loop_count(text: str) -> int:
    """``--loop N``: N rewinds, -1 forever."""
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"expected a number of rewinds N >= 1 (or -1: forever), got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected a number of seconds in (0, 3600], got {text!r}")
    return value


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """How the source is read and how a live one is waited for (`vlmedge run`); names follow jetson-utils'
    videoSource where one exists. Read back with :func:`source_options_from`."""
    g = parser.add_argument_group("source")
    g.add_argument("--loop", nargs="?", type=loop_count, const=-1, default=0, metavar="N",
                   help="rewind a video file / image folder at its end: --loop forever, --loop N N times")
    g.add_argument("--no-loop", dest="loop", action="store_const", const=0, help="play a file once (default)")
    g.add_argument("--input-size", metavar="WxH", default=None,
                   help="frame size to deliver: cameras are asked for it; RTSP/RTP through GStreamer scale in the "
                        "pipeline, before the colour conversion; everything else is resized")
    g.add_argument("--input-rate", type=float, metavar="FPS", default=None,
                   help="network streams: deliver at most FPS frames per second (cameras: the rate asked for; "
                        "files: the pacing rate instead of their timestamps)")
    g.add_argument("--input-flip", choices=FLIP_NAMES, default=None, help="turn every frame (default: none)")
    g.add_argument("--input-codec", choices=CODEC_NAMES, default=None,
                   help="what an rtp:// stream carries (default h264); for rtsp:// picks the depayloader")
    g.add_argument("--rtsp-latency", dest="rtsp_latency_ms", type=int, metavar="MS", default=None,
                   help="RTSP/RTP jitter buffer in milliseconds, GStreamer only (default 200; lower: fresher frames, "
                        "more drops on a lossy network)")
    g.add_argument("--stall-timeout", dest="stall_timeout_s", type=positive_seconds, metavar="S", default=2.0,
                   help="a live source without a new frame for S seconds is reconnected (default 2)")
    g.add_argument("--reconnect-backoff", dest="reconnect_backoff_s", type=positive_seconds, nargs=2, default=None,
                   metavar=("FIRST", "MAX"), help="seconds between (re)connect attempts: FIRST, doubling up to MAX "
                                                  "(default 0.25 2)")
    g.add_argument("--max-reconnects", type=positive_int, metavar="N", default=None,
                   help="end the run (failed, exit code 1) after N failed (re)connect attempts in a row "
                        "(default: keep trying)")
    g.add_argument("--open-timeout", dest="open_timeout_s", type=positive_seconds, metavar="S", default=10.0,
                   help="abandon and retry one open of a live source that takes longer than S seconds (default 10)")
    g.add_argument("--fail-fast", action=argparse.BooleanOptionalAction, default=False,
                   help="exit with an error when a live source cannot be opened at start, instead of retrying "
                        "until it answers with the status heartbeat running (default: retry)")
    g.add_argument("--behind-after", dest="behind_s", type=positive_seconds, metavar="S", default=1.0,
                   help="status says behind=true when frames are grabbed more than S seconds after the camera "
                        "took them (decoding cannot keep up; try --input-size/--input-rate) (default 1)")


def source_options_from(args: argparse.Namespace) -> dict:
    """The RunConfig fields of :func:`add_source_options`."""
    out = {name: getattr(args, name) for name in ("loop", "input_size", "input_rate", "input_flip", "input_codec",
                                                   "rtsp_latency_ms", "stall_timeout_s", "max_reconnects",
                                                   "open_timeout_s", "fail_fast", "behind_s")}
    if args.reconnect_backoff_s is not None:
        out["reconnect_backoff_s"] = tuple(args.reconnect_backoff_s)
    return out
