"""Demo training: patch labels, losses, a short real training run, native save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vlmedge.scenes import render as syn  # noqa: E402


@pytest.fixture(scope="module")
def td():
    pytest.importorskip("vlmedge.preprocess", reason="vlmedge.preprocess is not written yet")
    from vlmedge.export import train_demo
    return train_demo


def test_patch_labels_follow_masks(td):
    scene = syn.render_scene(2)
    lab = td.patch_labels(scene, (12, 16))
    assert lab.shape == (12, 16)
    for o in scene.objects:
        cov = (o.mask.reshape(12, 40, 16, 40).mean(axis=(1, 3)))
        idx = td.COMBO_INDEX[(o.kind, o.color)]
        assert (lab[cov > 0.99] == idx).all()
        assert (lab == idx).sum() >= 1
    none = ~np.any([o.mask for o in scene.objects], axis=0).reshape(12, 40, 16, 40).any(axis=(1, 3))
    assert (lab[none] == -1).all()


def test_seeds_are_disjoint_from_evaluation(td):
    from vlmedge.scenes.evaluation import EVAL_SEED_BASE
    for seed in (0, 1, 12345):
        s = td.train_seeds(td.TrainConfig(seed=seed, scenes=5000))
        assert s.min() >= 0 and s.max() < td.TRAIN_SEED_LIMIT <= EVAL_SEED_BASE


def test_config_validation(td):
    from vlmedge.errors import ConfigError
    with pytest.raises(ConfigError, match="steps"):
        td.TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="minutes"):
        td.TrainConfig(minutes=0)
    with pytest.raises(ConfigError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        td.TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match="same_colour_hard must be a number >= 0, got -1"):
        td.TrainConfig(same_colour_hard=-1)
    with pytest.raises(ConfigError, match="device must be"):
        td.TrainConfig(device=0)
    assert td.TrainConfig(device="cuda:1").device == "cuda:1"


def _two_object_batch(td, grid, first, second):
    """One scene's patch labels: ``first`` on the left half, ``second`` on the right (combo pairs)."""
    lab = torch.full((1, *grid), -1, dtype=torch.int16)
    lab[0, 2:6, 2:6] = td.COMBO_INDEX[first]
    lab[0, 2:6, 10:14] = td.COMBO_INDEX[second]
    present = torch.zeros(1, len(td.COMBOS), dtype=torch.bool)
    present[0, [td.COMBO_INDEX[first], td.COMBO_INDEX[second]]] = True
    return lab, present


def test_hard_same_colour_term_is_the_hardest_look_alike_patch(td):
    """The term adds, per (scene, query), softplus(1 + the query's best margin on a patch of a "same colour,
    other kind" object): a red cup's patches for "the red can" and the like. A scene with no object adds none."""
    import torch.nn.functional as F

    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec

    torch.manual_seed(0)
    tok = td.train_tokenizer()
    spec = ClipSpec(VisionSpec(td.IMAGE_SIZE, 16, 32, 1, 2),
                    TextSpec(32, 1, 2, tok.vocab_size, 77, eos_token_id=tok.eos_token_id), 32)
    model = CLIP(spec).eval()
    x = torch.randn(1, 3, *td.IMAGE_SIZE)
    ids = td.caption_ids(tok, 0)
    n = len(td.COMBOS)
    with torch.no_grad():
        lab, present = _two_object_batch(td, spec.vision.grid, ("cup", "red"), ("ball", "blue"))
        plain = td.losses(model, x, lab, present, ids, n)["query"]
        hard = td.losses(model, x, lab, present, ids, n, same_colour_hard=2.0)["query"]
        # by hand: the queries with a look-alike here are "red <other kind>" (on the cup) and "blue <other kind>"
        _, patches = model.encode_image(x)
        txt = model.encode_text(ids)
        logits = model.logit_scale.exp().clamp(max=100.0) * patches.reshape(-1, patches.shape[-1]) @ txt.T
        margin = logits[:, :n] - logits[:, n:].logsumexp(-1, keepdim=True)  # [P, C]
        flat = lab.reshape(-1).long()
        terms = []
        for obj in (("cup", "red"), ("ball", "blue")):
            on = flat == td.COMBO_INDEX[obj]
            for kind in syn.KINDS:
                if kind != obj[0]:
                    terms.append(F.softplus(margin[on, td.COMBO_INDEX[(kind, obj[1])]].max() + 1.0))
        assert torch.isclose(hard - plain, 2.0 * torch.stack(terms).mean(), rtol=1e-4)
        empty = torch.full_like(lab, -1)
        none = torch.zeros_like(present)
        assert torch.isclose(td.losses(model, x, empty, none, ids, n, same_colour_hard=2.0)["query"],
                             td.losses(model, x, empty, none, ids, n)["query"])


def test_a_given_dataset_must_hold_the_configured_scenes(td):
    from vlmedge.errors import ConfigError

    grid = (12, 16)
    data = td.render_dataset(np.arange(4), td.preprocess_spec(), grid, workers=1)
    with pytest.raises(ConfigError, match="the dataset holds 4 scenes, the config says 8"):
        td.train(td.TrainConfig(steps=1, scenes=8, batch=2, workers=1, threads=1), dataset=data)


def test_short_training_run_saves_a_loadable_model(td, tmp_path):
    from vlmedge.export.loaders import load_clip
    torch.manual_seed(0)
    cfg = td.TrainConfig(steps=4, scenes=8, batch=4, workers=1, threads=1, warmup=2)
    trained = td.train(cfg, tmp_path / "m")
    model = trained.model
    assert trained.preprocess == td.preprocess_spec() and trained.source == td.DEMO_SOURCE
    for name in ("clip_spec.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "m" / name).is_file()
    loaded = load_clip(str(tmp_path / "m"))
    assert loaded.model.spec == model.spec
    assert loaded.preprocess == td.preprocess_spec()
    assert loaded.source["id"] == "vlmedge-tabletop-demo" and loaded.source["origin"] == td.DEMO_SOURCE
    assert loaded.tokenizer.encode(["the red cup"]).tolist() == trained.tokenizer.encode(["the red cup"]).tolist()
    ids = torch.from_numpy(loaded.tokenizer.encode(["the red cup", "background"]))
    px = torch.randn(1, 3, *td.IMAGE_SIZE)
    with torch.no_grad():
        t0, t1 = model.encode_text(ids), loaded.model.float().encode_text(ids)
        i0, p0 = model.encode_image(px)
        i1, p1 = loaded.model.encode_image(px)
    assert torch.allclose(t0, t1, atol=2e-2)  # weights are stored as float16
    assert torch.allclose(p0, p1, atol=2e-2)
    assert abs(model.logit_scale.item() - loaded.model.logit_scale.item()) < 1e-2
    th, reports = td.calibrate_threshold(loaded, scenes=3, grid=(0.5, 0.9))
    assert th in (0.5, 0.9) and set(reports) == {0.5, 0.9}
    assert reports[0.9].rejection >= reports[0.5].rejection  # a higher threshold never finds more


def test_losses_are_finite_and_drop_when_fitting_one_batch(td):
    from vlmedge.export.model import CLIP
    from vlmedge.spec import ClipSpec, TextSpec, VisionSpec
    torch.manual_seed(0)
    tok = td.train_tokenizer()
    spec = ClipSpec(VisionSpec(td.IMAGE_SIZE, 16, 32, 1, 2),
                    TextSpec(32, 1, 2, tok.vocab_size, 77, eos_token_id=tok.eos_token_id), 32)
    model = CLIP(spec)
    pix, lab, pres = td.render_dataset(np.arange(4), td.preprocess_spec(), spec.vision.grid, workers=1)
    x, y, p = torch.from_numpy(pix).float(), torch.from_numpy(lab), torch.from_numpy(pres)
    ids = td.caption_ids(tok, 0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(25):
        parts = td.losses(model, x, y, p, ids, len(td.COMBOS))
        loss = parts["dense"] + parts["query"] + 0.2 * parts["global"]
        assert torch.isfinite(loss)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_same_colour_other_kind_pairs(td):
    m = td._same_colour_other_kind(len(td.COMBOS), "cpu")
    red_cup, red_can, blue_cup = (td.COMBO_INDEX[p] for p in (("cup", "red"), ("can", "red"), ("cup", "blue")))
    assert m[red_can, red_cup] and m[red_cup, red_can]  # a red can is a hard negative for "the red cup"
    assert not m[blue_cup, red_cup] and not m[red_cup, red_cup]
    assert int(m.sum()) == len(syn.COLOR_NAMES) * len(syn.KINDS) * (len(syn.KINDS) - 1)


def test_train_demo_cli_is_registered():
    from vlmedge.cli import build_parser
    args = build_parser().parse_args(["train-demo", "--out", "x", "--steps", "5", "--seed", "3", "--minutes", "1"])
    assert args.steps == 5 and args.seed == 3 and args.minutes == 1.0 and callable(args.func)
    assert args.device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a torch without CUDA")
def test_train_demo_on_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    from vlmedge.cli import main

    assert main(["train-demo", "--out", str(tmp_path / "m"), "--device", "cuda", "--steps", "1", "--scenes", "8",
                 "--workers", "1", "--no-bundles"]) == 1
    assert "--device cuda: this torch" in capsys.readouterr().err and not (tmp_path / "m").exists()


def _tree_digest(d):
    import hashlib
    from pathlib import Path

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir()) if p.is_file()}


def test_cli_never_writes_the_shipped_model_unless_asked(tmp_path, capsys):
    from vlmedge.cli import main
    from vlmedge.embedded import DEMO_DIR

    shipped = DEMO_DIR / "model"
    before = _tree_digest(shipped) if shipped.is_dir() else None
    quick = ["--steps", "1", "--scenes", "8", "--workers", "1", "--no-bundles"]  # were a refusal to regress
    assert main(["train-demo", *quick]) == 1
    err = capsys.readouterr().err
    assert "--out DIR" in err and "--replace-shipped" in err
    assert main(["train-demo", "--out", str(shipped), *quick]) == 1
    assert "is the shipped demo model; pass --replace-shipped" in capsys.readouterr().err
    assert main(["train-demo", "--replace-shipped", "--out", str(tmp_path / "m"), *quick]) == 1
    assert "drop --out" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["train-demo", "--out", str(tmp_path / "taken"), *quick]) == 1
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["train-demo", "--out", str(tmp_path / "taken"), "--force", *quick]) == 1
    assert "not a vlmedge model directory" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    if before is not None:
        assert _tree_digest(shipped) == before
    args = __import__("vlmedge.cli", fromlist=["build_parser"]).build_parser().parse_args(
        ["train-demo", "--out", "x"])
    assert args.minutes is None and args.bundles is None and not args.replace_shipped  # no cap, no bundles


def test_bundles_take_a_given_threshold_and_the_demo_count_rules(td, tmp_path, capsys):
    """--threshold skips the noun-phrase calibration (the shipped bundles use 0.5, chosen on commands); the
    manifest carries the count floor and margin picked for the demo model."""
    import json

    from vlmedge.cli import main

    out = tmp_path / "m"
    assert main(["train-demo", "--out", str(out), "--steps", "2", "--scenes", "8", "--workers", "1", "--bundles",
                 "--threshold", "0.5"]) == 0
    assert "grounding threshold 0.5 (--threshold)" in capsys.readouterr().out
    grounding = json.loads((tmp_path / "bundle-int8" / "manifest.json").read_text())["grounding"]
    assert grounding["threshold"] == 0.5
    assert grounding["count_min_score"] == td.COUNT_MIN_SCORE
    assert grounding["instance_score_margin"] == td.INSTANCE_SCORE_MARGIN
    with pytest.raises(SystemExit):
        main(["train-demo", "--out", str(tmp_path / "n"), "--threshold", "1.5"])
    assert "expected a threshold between 0 and 1, got '1.5'" in capsys.readouterr().err


def test_a_run_cut_short_by_the_time_cap_replaces_nothing(td, tmp_path, capsys):
    """An existing model stays as it was; the cut-short weights go aside, and the CLI says so (exit 1)."""
    from vlmedge.cli import main
    from vlmedge.export.loaders import load_clip

    out = tmp_path / "model"
    td.train(td.TrainConfig(steps=2, scenes=8, batch=4, workers=1, threads=1, warmup=1), out)
    before = _tree_digest(out)
    cfg = td.TrainConfig(steps=1000, scenes=8, batch=4, workers=1, threads=1, minutes=0.0001)
    with pytest.raises(td.TrainingCutShort, match=r"stopped after \d+ of 1000 steps.*nothing was replaced") as e:
        td.train(cfg, out, force=True)
    assert _tree_digest(out) == before
    assert e.value.saved is not None and e.value.saved.parent == tmp_path
    assert e.value.saved.name.startswith("model.incomplete-")
    assert load_clip(str(e.value.saved)).model.spec == load_clip(str(out)).model.spec  # kept, loadable aside
    assert main(["train-demo", "--out", str(out), "--force", "--minutes", "0.0001", "--steps", "1000",
                 "--scenes", "8", "--workers", "1", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "of 1000 steps" in err and "-minute cap (--minutes) was reached; nothing was replaced" in err
    assert _tree_digest(out) == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_training_shows_progress_bars_when_asked(td, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLMEDGE_PROGRESS", "1")
    td.train(td.TrainConfig(steps=3, scenes=8, batch=4, workers=1, threads=1, warmup=1), tmp_path / "m")
    err = capsys.readouterr().err
    assert "rendering scenes" in err and "/8 [" in err  # bars with their totals (the last refresh may be skipped)
    assert "training" in err and "/3 [" in err
    monkeypatch.setenv("VLMEDGE_PROGRESS", "0")
    td.train(td.TrainConfig(steps=2, scenes=8, batch=4, workers=1, threads=1, warmup=1), tmp_path / "n")
    captured = capsys.readouterr()
    assert "training" not in captured.err and "step     1/2" in captured.out  # lines instead of a bar


def test_train_variants_benchmark_trains_each_variant_on_one_dataset(tmp_path):
    """benchmarks/train_variants.py (how the v5 recipe was chosen): one rendering, a model per variant."""
    import json
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_variants.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "cpu", "16", "2", "1", "A-control,C-hard1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rendered 16 scenes" in proc.stdout
    for name, hard in (("A-control", 0.0), ("C-hard1", 1.0)):
        with tarfile.open(tmp_path / f"{name}.tar") as tf:
            info = json.load(tf.extractfile(f"{name}/train_info.json"))
            assert {f"{name}/model.safetensors", f"{name}/clip_spec.json"} <= set(tf.getnames())
        assert info["steps_done"] == 2 and info["config"]["same_colour_hard"] == hard
