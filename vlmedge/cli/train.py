"""`vlmedge train-demo`: train the embedded tabletop demo model (needs torch)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-demo", help="train the small embedded CLIP on synthetic tabletop scenes",
        description="Train the demo model (a ~1.8M-parameter CLIP) on synthetic tabletop scenes (seeds < 1000000) "
                    "and write it to a NEW model directory (--out) in the vlmedge native layout. Seeded and "
                    "reproducible for a given --steps. With --bundles it also picks the grounding threshold on "
                    "validation scenes and exports bundle-fp32/ and bundle-int8/ next to the model. The shipped "
                    "demo model is replaced only with --replace-shipped, and only by a run that took all its "
                    "steps: a run cut short by --minutes says so and replaces nothing.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="model directory to write (new or empty; --force replaces a model there); bundles, with "
                        "--bundles, go next to it")
    p.add_argument("--replace-shipped", action=argparse.BooleanOptionalAction, default=False,
                   help="write the installed package's demo model (vlmedge/assets/tabletop/model) and re-export its "
                        "bundles instead of --out")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an existing model directory in --out")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 8000, as the shipped model)")
    p.add_argument("--scenes", type=int, default=None,
                   help="distinct training scenes (default 16000, as the shipped model; 4.7 GB in memory)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap in minutes (default: none); a run it cuts short saves its weights aside, "
                        "says so, and replaces nothing")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--workers", type=int, default=2, help="scene-rendering processes (default 2)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]",
                   help="where to train (default cpu); cuda needs a CUDA build of torch. Same scenes, steps and "
                        "schedule; float rounding differs, so the weights are not bit-identical to a CPU run")
    p.add_argument("--bundles", action=argparse.BooleanOptionalAction, default=None,
                   help="also calibrate the threshold and export bundle-fp32/ and bundle-int8/ next to the model "
                        "(default: only with --replace-shipped)")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="the bundles' grounding threshold instead of calibrating it on the noun-phrase figures "
                        "(the shipped bundles: 0.5, chosen on validation commands by "
                        "benchmarks/calibrate_threshold_commands.py)")
    p.set_defaults(func=cmd_train_demo)


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a threshold between 0 and 1, got {text!r}")
    return value


def _output(args: argparse.Namespace, shipped):
    """The model directory to write, and whether an existing model there may be replaced."""
    from pathlib import Path

    from vlmedge.errors import ConfigError

    if args.replace_shipped:
        if args.out is not None and Path(args.out).resolve() != shipped.resolve():
            raise ConfigError(f"--replace-shipped writes {shipped}; drop --out {args.out} (or drop "
                              "--replace-shipped to write a new model there)")
        return shipped, True
    if args.out is None:
        raise ConfigError("give --out DIR, a new directory for the trained model (the shipped demo model is "
                          "replaced only with --replace-shipped)")
    out = Path(args.out)
    if out.resolve() == shipped.resolve() or shipped.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {args.out} is the shipped demo model; pass --replace-shipped to replace it")
    return out, args.force


def cmd_train_demo(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    from vlmedge.embedded import DEMO_DIR
    from vlmedge.export.train_demo import TrainConfig, calibrate_threshold, check_out, export_bundles, train

    out, force = _output(args, DEMO_DIR / "model")
    check_out(out, force)  # before any work
    defaults = TrainConfig()
    cfg = TrainConfig(steps=args.steps or defaults.steps, scenes=args.scenes or defaults.scenes, seed=args.seed,
                      minutes=args.minutes, threads=args.threads, workers=args.workers, device=args.device)
    train(cfg, out, force=force)  # TrainingCutShort (exit 1, nothing replaced) when --minutes cuts it short
    print(f"model written to {out}")
    bundles = args.bundles if args.bundles is not None else args.replace_shipped
    if bundles:
        from vlmedge.export.loaders import load_clip

        if args.threshold is not None:
            threshold = args.threshold
            print(f"grounding threshold {threshold} (--threshold)")
        else:
            saved = load_clip(str(out))  # calibrate on the saved (float16-stored) weights
            threshold, reports = calibrate_threshold(saved)
            print(f"grounding threshold {threshold} ({reports[threshold].summary()})")
        for precision, path in export_bundles(out, out.parent, threshold).items():
            print(f"{precision} bundle written to {path}")
    print(f"train-demo done in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0
