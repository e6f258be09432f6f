"""``vlmedge bench``: measure a bundle on this machine and check the runtime goals (measurement: runtime/bench.py)."""

from __future__ import annotations

import argparse

from vlmedge.cli.args import add_encoder_options, add_query_option, positive_int, providers_from, queries_from


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark a bundle: encoder latency, pipeline throughput, latency, memory",
        description="Measure a bundle on this machine and check the runtime goals (PASS/FAIL lines). Without a "
                    "bundle: the embedded demo bundle, whose goals are relative to preprocess + encode (a model that "
                    "small costs about as much as preprocessing the frame; the report says so).")
    p.add_argument("bundle", nargs="?", default=None,
                   help="bundle directory (default: the embedded int8 demo bundle, the one `vlmedge run` uses)")
    p.add_argument("--source", default=None,
                   help="video source for the pipeline run (default: a temporary video of synthetic scenes)")
    p.add_argument("--frames", type=positive_int, default=100, metavar="N",
                   help="frames per measurement (default 100)")
    p.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                   help="also write the results as JSON here")
    p.add_argument("--torch-baseline", metavar="SOURCE", default=None,
                   help="also time PyTorch eager on this checkpoint (in a subprocess; needs torch)")
    add_query_option(p)
    p.add_argument("--camera-fps", type=float, default=None, metavar="FPS",
                   help="frame rate of the synthetic camera video (without --source; default 30, or 1.5x the "
                        "encoder's rate when higher)")
    # The keys of vlmedge.scenes.video.CAMERA_FORMATS, written out: importing that module loads OpenCV, which
    # building the parser must not (tests/test_cli_run.py checks that both lists agree).
    p.add_argument("--camera-format", choices=("raw", "mjpg"), default="raw",
                   help="frames of the synthetic camera video: raw YUV like a YUYV/CSI camera (default) or JPEG "
                        "like an MJPG webcam (decoding then runs in the capture thread)")
    p.add_argument("--compare-backends", action=argparse.BooleanOptionalAction, default=True,
                   help="also time ONNX Runtime and OpenVINO side by side on the image encoder, with their agreement "
                        "(default: on; needs OpenVINO, else says so)")
    add_encoder_options(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vlmedge.runtime.bench import bench, format_report

    report = bench(Path(args.bundle) if args.bundle else None, source=args.source, frames=args.frames,
                   queries=queries_from(args),
                   torch_source=args.torch_baseline, providers=providers_from(args), prefetch=args.prefetch,
                   camera_fps=args.camera_fps, camera_format=args.camera_format, spinning=args.ort_spinning,
                   backend=args.backend, text_idle_s=args.text_idle_s, compare=args.compare_backends,
                   memory_budget_mb=args.memory_budget_mb)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0
