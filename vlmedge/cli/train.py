"""`vlmedge train-demo`: train the embedded tabletop demo model (needs torch)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-demo", help="train the small embedded CLIP on synthetic tabletop scenes",
        description="Train the embedded demo model (a ~1.8M-parameter CLIP) on synthetic tabletop scenes "
                    "(seeds < 1000000) and write it in the vlmedge native layout. Seeded and reproducible "
                    "for a given --steps; --minutes caps the wall time by cutting steps.")
    p.add_argument("--out", default=None,
                   help="output model directory (default: the package's vlmedge/assets/tabletop/model)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 5200, as the shipped model)")
    p.add_argument("--scenes", type=int, default=None,
                   help="distinct training scenes (default 8000, as the shipped model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--minutes", type=float, default=40.0,
                   help="wall-clock budget in minutes; steps are cut to fit (default 40)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--workers", type=int, default=2, help="scene-rendering processes (default 2)")
    p.add_argument("--bundles", action=argparse.BooleanOptionalAction, default=None,
                   help="also export bundle-fp32/ and bundle-int8/ next to the model "
                        "(default: yes when writing the embedded model)")
    p.set_defaults(func=cmd_train_demo)


def cmd_train_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmedge.embedded import DEMO_DIR
    from vlmedge.export.train_demo import TrainConfig, calibrate_threshold, export_bundles, train

    defaults = TrainConfig()
    cfg = TrainConfig(steps=args.steps or defaults.steps, scenes=args.scenes or defaults.scenes, seed=args.seed,
                      minutes=args.minutes, threads=args.threads, workers=args.workers)
    out = Path(args.out) if args.out else DEMO_DIR / "model"
    train(cfg, out)
    print(f"model written to {out}")
    bundles = args.bundles if args.bundles is not None else args.out is None
    if bundles:
        from vlmedge.export.loaders import load_clip

        saved = load_clip(str(out))  # calibrate on the saved (float16-stored) weights
        threshold, reports = calibrate_threshold(saved)
        print(f"grounding threshold {threshold} ({reports[threshold].summary()})")
        for precision, path in export_bundles(out, out.parent, threshold).items():
            print(f"{precision} bundle written to {path}")
    return 0
