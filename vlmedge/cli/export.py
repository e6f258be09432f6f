"""CLI sub-commands ``export``, ``verify`` and ``build-engine``. Torch-free at import time:
the heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
import sys
import time

from vlmedge.errors import ConfigError
from vlmedge.manifest import DENSE_HEADS, PRECISIONS
from vlmedge.platforms import (
    CALIBRATION_METHODS,
    DEFAULT_PLATFORM,
    PLATFORMS,
    WEIGHT_ROUNDINGS,
    fp16_platforms,
)
from vlmedge.spec import ACTIVATIONS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a CLIP checkpoint to a self-describing ONNX bundle",
        description="Export a CLIP checkpoint (Hugging Face dir or id, OpenAI/OpenCLIP state dict, or a vlmedge "
                    "native dir) into a bundle directory: ONNX image and text encoders, tokenizer, manifest.json "
                    "with sha256 of every file. The bundle is written atomically.")
    p.add_argument("source", help="checkpoint path or hub id")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--image-size", default=None, metavar="H[xW]",
                   help="export input size, a multiple of the patch size (default: the model's native size)")
    p.add_argument("--dense", default="naive", metavar="NAME",
                   help=f"dense (patch) head: {', '.join(DENSE_HEADS)} (default: naive)")
    p.add_argument("--precision", default="fp32", metavar="P",
                   help=f"{', '.join(PRECISIONS)} (default: fp32; int8 = static QDQ calibrated on --calib; "
                        f"fp16 = {', '.join(fp16_platforms())} only)")
    p.add_argument("--platform", default=None, metavar="P",
                   help=f"where the bundle runs: {', '.join(PLATFORMS)} (default: {DEFAULT_PLATFORM}); picks the "
                        "opset, static shapes, the int8 scheme and the default execution providers")
    p.add_argument("--target", default=None, metavar="P", help="deprecated name of --platform")
    p.add_argument("--calib", default=None, metavar="PATH|synthetic",
                   help="int8 calibration frames: a folder of images or a video of the robot's own camera, or "
                        "'synthetic' (rendered tabletop scenes); required for int8 except for the demo model")
    p.add_argument("--calib-count", type=int, default=None, metavar="N", help="calibration frames (default: 32)")
    p.add_argument("--calib-method", default=None, metavar="M",
                   help=f"int8 activation ranges: {', '.join(CALIBRATION_METHODS)} (default: minmax; percentile "
                        "clips the outlier channels of CLIP ViTs; entropy, as ONNX Runtime runs it, equals minmax)")
    p.add_argument("--weight-rounding", default=None, metavar="R",
                   help=f"int8 weight values: {', '.join(WEIGHT_ROUNDINGS)} (default: gptq, chosen for each layer's "
                        "output on the calibration frames; nearest exports faster: ViT-B/16 ~75 s less)")
    p.add_argument("--int8-outputs", action="store_true", default=None,
                   help="int8: quantize the output projections too (default on cpu: float, for ~1%% of the time "
                        "and patch agreement with fp32 98.6%% -> 99.1-99.3%% on ViT-B/16)")
    p.add_argument("--no-openvino-file", dest="openvino_file", action="store_false", default=None,
                   help="int8 on cpu: no image_encoder_openvino.onnx (the QDQ graph OpenVINO runs with its int8 "
                        "attention kernel, saved beside ONNX Runtime's CPU form; ViT-B/16: 88 MB) for a device that "
                        "runs ONNX Runtime only; OpenVINO then runs image_encoder.onnx")
    p.add_argument("--smooth-quant", type=float, default=None, metavar="ALPHA",
                   help="int8: SmoothQuant with this alpha (e.g. 0.5) before quantizing; needs neural-compressor")
    p.add_argument("--act", default=None, metavar="A",
                   help=f"MLP activation of a bare OpenAI/OpenCLIP state dict: {', '.join(ACTIVATIONS)} (default: "
                        "quick_gelu as OpenAI's models; LAION-trained OpenCLIP models use gelu)")
    p.add_argument("--vocab", default=None, metavar="FILE",
                   help="commands, one per line, whose text embeddings are stored in the bundle")
    p.add_argument("--preprocess", default=None, metavar="MODE",
                   help="shortest-crop (CLIP recipe) or full-frame (default: the checkpoint's recipe)")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an existing bundle in --out")
    p.set_defaults(func=cmd_export)

    v = subparsers.add_parser(
        "verify", help="check a bundle's hashes and encoders (and parity vs its source)",
        description="Check every file's size and sha256 and the manifest, run both encoders on sample inputs "
                    "(shapes, L2 normalization); with --against, report parity and latency vs PyTorch eager.")
    v.add_argument("bundle", help="bundle directory")
    v.add_argument("--against", default=None, metavar="SOURCE", help="the checkpoint the bundle came from")
    v.add_argument("--runs", type=int, default=10, help="timed runs for the latency figures (default: 10)")
    v.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print the report as JSON")
    v.set_defaults(func=cmd_verify)

    b = subparsers.add_parser(
        "build-engine", help="build a TensorRT engine for a bundle's image encoder (on the device)",
        description="Parse the bundle's image_encoder.onnx with TensorRT and write "
                    "image_encoder.trt<full TensorRT version>.sm<cc>.<precision>.engine plus a JSON sidecar into "
                    "the bundle. The precision defaults to the bundle's; LayerNorm, Softmax and the L2 "
                    "normalizations stay fp32. Needs a CUDA GPU and TensorRT >= 8.5 Python bindings.")
    b.add_argument("bundle", help="bundle directory")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                   help="fp16 (an fp16 bundle, or fp16 kernels for an fp32 bundle)")
    g.add_argument("--int8", dest="precision", action="store_const", const="int8",
                   help="int8 from the bundle's QDQ scales (needs an int8 bundle for a GPU platform)")
    g.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="fp32 (an fp32 bundle)")
    b.add_argument("--workspace", type=int, default=1024, metavar="MB", help="builder workspace (default: 1024)")
    b.add_argument("--max-batch", type=int, default=8, help="largest batch for dynamic-batch bundles (default: 8)")
    b.add_argument("--out-dir", default=None, help="where to write the engine (default: the bundle)")
    b.set_defaults(func=cmd_build_engine, precision=None)  # None: the bundle's precision


def cmd_export(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()  # the one duration reported: the whole command, imports included
    from vlmedge.export import progress
    from vlmedge.export.bundle import DEFAULT_CALIB_COUNT, export_bundle, summarize

    _warn_misread(args)
    with progress.redirect_logging():
        manifest = export_bundle(
            args.source, args.out, image_size=args.image_size, dense=args.dense, precision=args.precision,
            platform=_platform_from(args), calib=args.calib, calib_count=args.calib_count or DEFAULT_CALIB_COUNT,
            calib_method=args.calib_method, smooth_quant=args.smooth_quant, weight_rounding=args.weight_rounding,
            int8_outputs=args.int8_outputs, openvino_file=args.openvino_file, vocab=args.vocab,
            preprocess_mode=args.preprocess, force=args.force, act=args.act)
    print(summarize(manifest, args.out, seconds=time.perf_counter() - t0))
    return 0


def _warn_misread(args: argparse.Namespace) -> None:
    """Options that would be read otherwise than meant, or not at all: said before the long work starts."""
    h, _, w = str(args.image_size or "").lower().partition("x")
    if h.strip().isdigit() and w.strip().isdigit() and int(h) > int(w):
        print(f"vlmedge export: warning: --image-size {args.image_size} is height x width: a portrait input "
              f"{int(w)} wide and {int(h)} high; for a landscape camera give {w.strip()}x{h.strip()}", file=sys.stderr)
    if args.precision != "int8":
        given = [f"--{n.replace('_', '-')}" for n in ("calib", "calib_count", "calib_method", "smooth_quant",
                                                       "weight_rounding", "int8_outputs", "openvino_file")
                 if getattr(args, n, None) is not None]
        if given:
            print(f"vlmedge export: warning: {', '.join(given)} ignored with --precision {args.precision} "
                  "(only int8 is calibrated)", file=sys.stderr)


def _platform_from(args: argparse.Namespace) -> str:
    """``--platform``, or ``--target`` (its deprecated name, with a warning on stderr)."""
    if args.target is None:
        return args.platform or DEFAULT_PLATFORM
    print("vlmedge export: warning: --target is deprecated; use --platform", file=sys.stderr)
    if args.platform is not None and args.platform != args.target:
        raise ConfigError(f"--platform {args.platform} and --target {args.target} (its deprecated name) disagree; "
                          "give --platform only")
    return args.target


def cmd_verify(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from vlmedge.export import progress
    from vlmedge.export.verify import verify_bundle

    what = "verify against " + str(args.against) if args.against else "verify"
    with progress.redirect_logging(), progress.activity(what):
        report = verify_bundle(args.bundle, against=args.against, runs=max(1, args.runs))
    if args.json:
        print(json.dumps({"bundle": report.bundle, "checks": report.checks, "parity": report.parity,
                          "latency_ms": report.latency_ms}, indent=2))
    else:
        print(report.summary())
        print(f"  verified in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from vlmedge.export import progress
    from vlmedge.export.tensorrt import build_engine

    with progress.redirect_logging(), progress.activity("building the TensorRT engine"):
        engine = build_engine(args.bundle, precision=args.precision, workspace_mb=args.workspace,
                              max_batch=args.max_batch, out_dir=args.out_dir)
    print(f"wrote {engine} and {engine.name}.json in {time.perf_counter() - t0:.1f} s")
    return 0
