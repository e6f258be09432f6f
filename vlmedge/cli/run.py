"""``vlmedge run``: ground language queries in a live source and publish targets (the default command)."""

from __future__ import annotations

import argparse

from vlmedge.cli.args import (
    add_bundle_option,
    add_encoder_options,
    add_query_option,
    positive_int,
    providers_from,
    queries_from,
    unit_interval,
)
from vlmedge.defaults import DEFAULT_SOURCE
from vlmedge.protocol import DEFAULT_CONTROL_ADDRESS, DEFAULT_PUB_ADDRESS

RUN_EPILOG = """\
examples:
  vlmedge                                           # = vlmedge run: synthetic scene, embedded model, "the red cup"
  vlmedge run --source 0 --query "the red cup" --query "a bottle"
  vlmedge run --source file://clip.mp4 --bundle bundles/vitb16-int8 --headless --max-frames 100
  vlmedge run --source csi://0 --record out.mp4 --heatmaps

Targets are published as `targets` messages on --publish (see docs/PROTOCOL.md); change the
queries while running with `vlmedge send set_queries "the blue ball"` (control socket --control).
"""


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
    p.add_argument("--record", metavar="OUT.mp4", default=None, help="record the overlay video to this file")
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
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=False,
                   help="restart a video file / image folder at its end")
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
    add_encoder_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from vlmedge.runtime.app import RunConfig, run

    cfg = RunConfig(source=args.source, bundle=args.bundle, queries=queries_from(args), display=args.display,
                    record=args.record, publish=args.publish, control=args.control, heatmaps=args.heatmaps,
                    max_frames=args.max_frames, threshold=args.threshold, loop=args.loop, realtime=args.realtime,
                    curve_keys=args.curve_keys, providers=providers_from(args), smoothing=args.smoothing,
                    taught=args.taught,
                    prefetch=args.prefetch, ort_spinning=args.ort_spinning)
    summary = run(cfg)
    lat = "-" if summary.latency_p50_ms is None else f"{summary.latency_p50_ms:.1f}/{summary.latency_p99_ms:.1f} ms"
    print(f"vlmedge run: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} FPS), "
          f"capture-to-publish p50/p99 {lat}, stopped by {summary.stop_reason}")
    return 0
