"""Train demo-model variants side by side on one rendered dataset (issue #13: what moves counting).

    python benchmarks/train_variants.py OUT DEVICE SCENES STEPS MINUTES VARIANTS
    e.g. python benchmarks/train_variants.py out cuda 8000 5200 6.5 A-control,B-same3,C-hard1,D-same2-hard1,E-hard2
         python benchmarks/train_variants.py out cuda 16000 8000 3.5 F-16k      (the shipped v5 recipe)

Renders the scenes once (every CPU), then trains each variant in its own forked process (the parent never
touches CUDA) with ``TrainConfig(device=DEVICE, ...)``; MINUTES caps each run (a capped run is kept, its steps
recorded). Writes OUT/VARIANT.tar (the model directory and train_info.json). Evaluate each with
``vlmedge eval-grounding --suite commands --seed 900000 --scenes 300 BUNDLE`` after
``export.train_demo.export_bundles(model_dir, out_dir, threshold=0.5)``. Results of 2026-11-30 (one H200):
benchmarks/results/train-variants-validation-2026-11-30.*"""
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(message)s", stream=sys.stdout)
os.environ.setdefault("VLMEDGE_PROGRESS", "0")
from vlmedge.export import train_demo as td  # noqa: E402

VARIANTS = {
    "A-control": {},
    "B-same3": {"same_colour_weight": 3.0},
    "C-hard1": {"same_colour_hard": 1.0},
    "D-same2-hard1": {"same_colour_weight": 2.0, "same_colour_hard": 1.0},
    "E-hard2": {"same_colour_hard": 2.0},
    "F-16k": {},
}


def run_one(name, cfg, dataset, out):
    t = time.time()
    info = {"variant": name, "config": {k: getattr(cfg, k) for k in ("steps", "scenes", "device", "same_colour_weight",
                                                                      "same_colour_hard", "minutes")}}
    d = out / name
    try:
        td.train(cfg, out=d, dataset=dataset)
        info["steps_done"] = cfg.steps
    except td.TrainingCutShort as e:
        info["steps_done"] = e.steps_done
        if e.saved:
            shutil.move(str(e.saved), d)
    info["minutes"] = round((time.time() - t) / 60, 2)
    (d / "train_info.json").write_text(json.dumps(info, indent=1))
    with tarfile.open(out / f"{name}.tar", "w") as tf:
        tf.add(d, arcname=name)
    shutil.rmtree(d)
    print("DONE", json.dumps(info), flush=True)


def main():
    out, device, scenes, steps, minutes, which = sys.argv[1:7]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(VARIANTS) if which == "all" else which.split(",")
    base = td.TrainConfig(device=device, scenes=int(scenes), steps=int(steps), minutes=float(minutes),
                          workers=max(1, (os.cpu_count() or 2)), threads=2)
    t = time.time()
    tok = td.train_tokenizer()
    grid = td.default_spec(tok.vocab_size, tok.eos_token_id).vision.grid
    dataset = td.render_dataset(td.train_seeds(base), td.preprocess_spec(), grid, base.workers)
    print(f"rendered {len(dataset[0])} scenes in {time.time() - t:.0f} s", flush=True)
    ctx = mp.get_context("fork")  # the parent never touched CUDA: the children may
    procs = [ctx.Process(target=run_one, args=(n, replace(base, **VARIANTS[n]), dataset, out), name=n) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print("exit codes", [p.exitcode for p in procs], f"total {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
