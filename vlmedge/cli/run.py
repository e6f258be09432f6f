"""CLI sub-commands ``run``, ``classify`` and ``bench`` (torch-free; heavy imports inside handlers)."""

from __future__ import annotations

import argparse

from vlmedge.defaults import DEFAULT_QUERY, DEFAULT_SOURCE
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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _unit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="ground language queries in a live video source and publish targets (default command)",
        description="Capture frames, ground the queries with a bundle and publish targets over ZeroMQ.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", "-s", default=DEFAULT_SOURCE,
                   help="camera index (0), /dev/videoN, csi://0, rtsp://..., file://clip.mp4, an image folder, "
                        f"or synthetic://tabletop (default: {DEFAULT_SOURCE})")
    p.add_argument("--bundle", "-b", default=None,
                   help="bundle directory (default: the embedded int8 tabletop demo bundle)")
    p.add_argument("--query", "-q", action="append", dest="queries", metavar="TEXT",
                   help=f"a command to ground; repeat for several (default: {DEFAULT_QUERY!r})")
    p.add_argument("--display", action=argparse.BooleanOptionalAction, default=None,
                   help="show the live window (default: when a display exists); --no-display = headless")
    p.add_argument("--headless", dest="display", action="store_const", const=False,
                   help="same as --no-display: print targets instead of showing a window")
    p.add_argument("--record", metavar="OUT.mp4", default=None, help="record the overlay video to this file")
    p.add_argument("--publish", default=DEFAULT_PUB_ADDRESS, metavar="ADDR",
                   help=f"ZeroMQ PUB address for targets/status/heatmaps, 'none' to disable (default: {DEFAULT_PUB_ADDRESS})")
    p.add_argument("--control", default=DEFAULT_CONTROL_ADDRESS, metavar="ADDR",
                   help=f"ZeroMQ REP address for control requests, 'none' to disable (default: {DEFAULT_CONTROL_ADDRESS})")
    p.add_argument("--heatmaps", action=argparse.BooleanOptionalAction, default=False,
                   help="also publish per-query heatmaps (default: off)")
    p.add_argument("--max-frames", type=_positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--threshold", type=_unit, default=None, metavar="T",
                   help="patch probability threshold in [0, 1] (default: the bundle's)")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=False,
                   help="restart a video file / image folder at its end")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="play files and synthetic scenes at their frame rate like a camera (default: on); "
                        "--no-realtime: ground every frame, each read when the loop is ready for it")
    p.add_argument("--curve-keys", metavar="DIR", default=None,
                   help="CURVE-encrypt both sockets with the keys in DIR (from `vlmedge keys DIR`)")
    p.add_argument("--providers", nargs="+", default=None, metavar="EP",
                   help="ONNX Runtime execution providers (default: best available for the bundle target)")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="preprocess the next frame in its own thread while the encoder runs "
                        "(default: when there are spare CPU cores or a GPU provider)")
    p.add_argument("--smoothing", action=argparse.BooleanOptionalAction, default=True,
                   help="temporal smoothing and stable track ids (default: on)")
    p.add_argument("--ort-spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime worker threads spin-wait while an encode runs and stop when it returns "
                        "(default: on; ~15%% faster on the 2-core dev box). --no-ort-spinning: they sleep, "
                        "leaving those cycles to other busy processes")
    p.set_defaults(func=run_command)

    c = subparsers.add_parser(
        "classify", help="zero-shot classify a whole image against labels",
        description="Whole-image zero-shot classification: softmax(logit_scale * cos(image, prompt(label))).")
    c.add_argument("image", help="image file (PNG, JPEG, ...)")
    c.add_argument("--labels", "-l", nargs="+", required=True, metavar="LABEL", help="candidate labels")
    c.add_argument("--bundle", "-b", default=None, help="bundle directory (default: the embedded int8 bundle)")
    c.add_argument("--prompt", default="a photo of {}", help="prompt template with one {} (default: 'a photo of {}')")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    c.set_defaults(func=_classify)

    b = subparsers.add_parser(
        "bench", help="benchmark a bundle: encoder latency, pipeline throughput, latency, memory",
        description="Measure a bundle on this machine and check the runtime targets (PASS/FAIL lines).")
    b.add_argument("bundle", help="bundle directory")
    b.add_argument("--source", default=None,
                   help="video source for the pipeline run (default: a temporary video of synthetic scenes)")
    b.add_argument("--frames", type=_positive_int, default=100, metavar="N", help="frames per measurement (default 100)")
    b.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="also write the results as JSON here")
    b.add_argument("--torch-baseline", metavar="SOURCE", default=None,
                   help="also time PyTorch eager on this checkpoint (in a subprocess; needs torch)")
    b.add_argument("--query", "-q", action="append", dest="queries", metavar="TEXT", help="queries (default: 'the red cup')")
    b.add_argument("--providers", nargs="+", default=None, metavar="EP", help="ONNX Runtime execution providers")
    b.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="preprocess in its own thread during the pipeline run (default: auto, as `vlmedge run`)")
    b.add_argument("--ort-spinning", action=argparse.BooleanOptionalAction, default=True,
                   help="as `vlmedge run --ort-spinning` (default: on), for the encoder and the pipeline")
    b.add_argument("--camera-fps", type=float, default=None, metavar="FPS",
                   help="frame rate of the synthetic camera video (without --source; default 30, or 1.5x the "
                        "encoder's rate when higher)")
    b.add_argument("--camera-format", choices=("raw", "mjpg"), default="raw",
                   help="frames of the synthetic camera video: raw YUV like a YUYV/CSI camera (default) or JPEG "
                        "like an MJPG webcam (decoding then runs in the capture thread)")
    b.set_defaults(func=_bench)


def run_command(args) -> int:
    from vlmedge.runtime.app import RunConfig, run

    cfg = RunConfig(source=args.source, bundle=args.bundle, queries=tuple(args.queries or (DEFAULT_QUERY,)),
                    display=args.display, record=args.record, publish=args.publish, control=args.control,
                    heatmaps=args.heatmaps, max_frames=args.max_frames, threshold=args.threshold, loop=args.loop,
                    realtime=args.realtime, curve_keys=args.curve_keys,
                    providers=tuple(args.providers) if args.providers else None, smoothing=args.smoothing,
                    prefetch=args.prefetch, ort_spinning=args.ort_spinning)
    summary = run(cfg)
    lat = "-" if summary.latency_p50_ms is None else f"{summary.latency_p50_ms:.1f}/{summary.latency_p99_ms:.1f} ms"
    print(f"vlmedge run: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} FPS), "
          f"capture-to-publish p50/p99 {lat}, stopped by {summary.stop_reason}")
    return 0


def _classify(args) -> int:
    import json

    from vlmedge.embedded import resolve_bundle
    from vlmedge.runtime.grounding.classify import read_image
    from vlmedge.runtime.grounding.grounder import Grounder

    frame = read_image(args.image)
    grounder = Grounder(resolve_bundle(args.bundle), smoothing=False)
    result = grounder.classify(frame, args.labels, prompt=args.prompt)
    if args.json:
        print(json.dumps({"image": str(args.image), "bundle": grounder.manifest.model_id, **result.to_dict()}))
    else:
        width = max(len(lab) for lab in result.labels)
        for lab, p in zip(result.labels, result.probs):
            print(f"{lab:<{width}}  {p:6.1%}")
    return 0


def _bench(args) -> int:
    import json
    from pathlib import Path

    from vlmedge.runtime.bench import bench, format_report

    report = bench(Path(args.bundle), source=args.source, frames=args.frames,
                   queries=tuple(args.queries or (DEFAULT_QUERY,)), torch_source=args.torch_baseline,
                   providers=args.providers, prefetch=args.prefetch, camera_fps=args.camera_fps,
                   camera_format=args.camera_format, spinning=args.ort_spinning)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0
