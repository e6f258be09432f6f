"""``vlmedge run``: ground language queries in a live source and publish targets (the default command)."""

from __future__ import annotations

import argparse
import sys

from vlmedge.cli.args import (
    add_bundle_option,
    add_encoder_options,
    add_query_option,
    add_source_options,
    positive_int,
    providers_from,
    queries_from,
    source_options_from,
    unit_interval,
)
from vlmedge.defaults import DEFAULT_SOURCE
from vlmedge.protocol import DEFAULT_CONTROL_ADDRESS, DEFAULT_PUB_ADDRESS
from vlmedge.runtime.web import DEFAULT_WEB_ADDRESS

RUN_EPILOG = """\
examples:
  vlmedge                                           # = vlmedge run: synthetic scene, embedded model, "the red cup"
  vlmedge run --source 0 --query "the red cup" --query "a bottle"
  vlmedge run --source file://clip.mp4 --bundle bundles/vitb16-int8 --headless --max-frames 100
  vlmedge run --source csi://0 --record out.mp4 --heatmaps
  vlmedge run --source 0 --web                      # then open http://127.0.0.1:8080 (ssh -L 8080:127.0.0.1:8080)
  vlmedge run --source 0 --record out.mcap          # a ROS 2 bag: ros2 bag play out.mcap, or Foxglove

Targets are published as `targets` messages on --publish (see docs/PROTOCOL.md); change the
queries while running with `vlmedge send set_queries "the blue ball"` (control socket --control).

Stop with Ctrl-C (or q / Esc in the window). Headless, one line is printed about twice a second:
  frame 42: 'the red cup': 0.97 bbox=[12, 270, 160, 400] id=1 (+1 more)  [29.8 FPS, 41 ms]
  frame 42       the frame's number from the source
  'the red cup'  the query; per query, its best target:
  0.97           its score (0..1: how sure the model is)
  bbox=[...]     its box in frame pixels: x0, y0, x1, y1
  id=1           its track id, stable while the same object stays in view (--no-smoothing: none)
  (+1 more)      further targets of the same query (e.g. two red cups)
  count=2        a counting command's count ("how many bottles")
  not found (0.31): why   nothing found: the best score, and why when the command says (a relation...)
  [29.8 FPS, 41 ms]  frames grounded per second over the last 3 s, and capture-to-publish latency
`vlmedge subscribe` prints what other programs receive.
"""


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """RunConfig field (= argparse dest) -> the option a user types, for errors: --publish, not RunConfig.publish."""
    out: dict[str, str] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in out:
            out[action.dest] = longs[0]
    return out


def _user_error(e, flags: dict[str, str]):
    """The same error naming the command-line option instead of the RunConfig field."""
    import re

    text = re.sub(r"RunConfig\.(\w+)", lambda m: flags.get(m.group(1), "--" + m.group(1).replace("_", "-")), str(e))
    return type(e)(text) if text != str(e) else e


def _stop_hint(args: argparse.Namespace) -> str:
    from vlmedge.runtime.display import display_available

    window = args.display if args.display is not None else display_available()[0]
    if window:
        return "vlmedge run: q or Esc in the window (or Ctrl-C here) to stop"
    return ("vlmedge run: headless: a line per frame about twice a second (`vlmedge run --help` explains it); "
            "Ctrl-C to stop")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="ground language queries in a live video source and publish targets (default command)",
        description="Capture frames, ground the queries with a bundle and publish targets over ZeroMQ.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", "-s", default=DEFAULT_SOURCE,
                   help="camera index (0), /dev/videoN, csi://0, rtsp://..., file://clip.mp4, an image folder, "
                        f"or synthetic://tabletop (default: {DEFAULT_SOURCE})")
    add_bundle_option(p)
    add_query_option(p)
    p.add_argument("--display", action=argparse.BooleanOptionalAction, default=None,
                   help="show the live window (default: when a display exists); --no-display = headless")
    p.add_argument("--headless", dest="display", action="store_const", const=False,
                   help="same as --no-display: print targets instead of showing a window")
    p.add_argument("--record", metavar="OUT", default=None,
                   help="record to this file, by its extension: .mp4/.avi the overlay video; .mcap a ROS 2 bag "
                        "(camera JPEG, vision_msgs/Detection2DArray, targets JSON; needs vlmedge[mcap])")
    p.add_argument("--web", nargs="?", const=DEFAULT_WEB_ADDRESS, default=None, metavar="ADDR",
                   help=f"serve the browser view: the live overlay, the targets, the commands, pause/resume "
                        f"(default address {DEFAULT_WEB_ADDRESS}; another HOST:PORT makes it reachable from the "
                        "network, without a login; needs vlmedge[web])")
    p.add_argument("--publish", default=DEFAULT_PUB_ADDRESS, metavar="ADDR",
                   help="ZeroMQ PUB address for targets/status/heatmaps, 'none' to disable "
                        f"(default: {DEFAULT_PUB_ADDRESS})")
    p.add_argument("--control", default=DEFAULT_CONTROL_ADDRESS, metavar="ADDR",
                   help=f"ZeroMQ REP address for control requests, 'none' to disable "
                        f"(default: {DEFAULT_CONTROL_ADDRESS})")
    p.add_argument("--heatmaps", action=argparse.BooleanOptionalAction, default=False,
                   help="also publish per-query heatmaps (default: off)")
    p.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--threshold", type=unit_interval, default=None, metavar="T",
                   help="patch probability threshold in [0, 1] (default: the bundle's)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="play files and synthetic scenes at their frame rate like a camera (default: on); "
                        "--no-realtime: ground every frame, each read when the loop is ready for it")
    p.add_argument("--curve-keys", metavar="DIR", default=None,
                   help="CURVE-encrypt both sockets with the keys in DIR (from `vlmedge keys DIR`)")
    p.add_argument("--smoothing", action=argparse.BooleanOptionalAction, default=True,
                   help="temporal smoothing and stable track ids (default: on)")
    p.add_argument("--taught", metavar="FILE.json", default=None,
                   help="keep taught objects (`vlmedge send teach NAME x0 y0 x1 y1`) in this file: loaded at start, "
                        "rewritten on every teach/forget (default: this run only)")
    add_source_options(p)
    add_encoder_options(p)
    p.set_defaults(func=cmd_run)
    p.set_defaults(run_flags=_flag_names(p))


def cmd_run(args: argparse.Namespace) -> int:
    from vlmedge.errors import ConfigError
    from vlmedge.runtime.app import run

    try:
        cfg = _run_config(args)
    except ConfigError as e:
        raise _user_error(e, getattr(args, "run_flags", {})) from None
    summary = run(cfg, on_ready=lambda _endpoints: print(_stop_hint(args), file=sys.stderr, flush=True))
    return _print_summary(summary)


def _run_config(args: argparse.Namespace):
    from vlmedge.runtime.app import RunConfig

    cfg = RunConfig(source=args.source, bundle=args.bundle, queries=queries_from(args), display=args.display,
                    record=args.record, web=args.web, publish=args.publish, control=args.control,
                    heatmaps=args.heatmaps,
                    max_frames=args.max_frames, threshold=args.threshold, realtime=args.realtime,
                    **source_options_from(args),
                    curve_keys=args.curve_keys, providers=providers_from(args), smoothing=args.smoothing,
                    taught=args.taught,
                    prefetch=args.prefetch, ort_spinning=args.ort_spinning, backend=args.backend,
                    text_idle_s=args.text_idle_s, memory_budget_mb=args.memory_budget_mb)
    return cfg


def _print_summary(summary) -> int:
    lat = "-" if summary.latency_p50_ms is None else f"{summary.latency_p50_ms:.1f}/{summary.latency_p99_ms:.1f} ms"
    print(f"vlmedge run: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} FPS), "
          f"capture-to-publish p50/p99 {lat}, stopped by {summary.stop_reason}")
    if summary.source_state == "failed":  # a source that failed for good is an error, not a normal end
        print(f"vlmedge run: error: the source failed: {summary.extra.get('source_error') or 'unknown error'}",
              file=sys.stderr)
        return 1
    return 0
