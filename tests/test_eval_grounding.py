"""Grounding benchmark: metric code with oracle/blind grounders, then the embedded bundles."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from vlmedge.cli.evaluate import evaluate_bundle
from vlmedge.errors import ArtifactError, ConfigError
from vlmedge.runtime.grounding.results import Target
from vlmedge.scenes import evaluation as eg
from vlmedge.scenes import render as syn

SEED, N = eg.EVAL_SEED_BASE, 12


def _scenes_by_frame(n=N, seed=SEED):
    return {syn.render_scene(s).frame.tobytes(): syn.render_scene(s) for s in range(seed, seed + n)}


def _oracle(scenes, wrong=False):
    """Answers from the ground truth: the object's mask centre and box (or another object's)."""
    def ground(frame, queries):
        scene = scenes[frame.tobytes()]
        targets = []
        for q in queries:
            hit = [o for o in scene.objects if o.caption() == q]
            if wrong and hit:
                others = [o for o in scene.objects if o is not hit[0]]
                hit = others[:1]
            if not hit:
                targets.append(Target(query=q, found=False, score=0.1))
                continue
            o = hit[0]
            ys, xs = np.nonzero(o.mask)
            i = len(ys) // 2
            targets.append(Target(query=q, found=True, score=0.9, bbox=o.bbox, center=(float(xs[i]), float(ys[i])),
                                  peak=(float(xs[i]), float(ys[i])), area=o.area))
            targets.append(Target(query=q, found=True, score=0.6, bbox=(0, 0, 5, 5), center=(2.0, 2.0),
                                  peak=(2.0, 2.0), area=25))  # a weaker second instance: must be ignored
        return SimpleNamespace(targets=tuple(targets))
    return ground


def test_iou():
    assert eg.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert eg.iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert eg.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_oracle_scores_perfectly():
    r = eg.evaluate(_oracle(_scenes_by_frame()), scenes=N, seed=SEED)
    assert (r.pointing, r.box_hit, r.rejection, r.discrimination) == (1.0, 1.0, 1.0, 1.0)
    assert r.n_present == N and r.n_absent == N and 0 < r.n_discrimination <= N


def test_wrong_object_and_blind_grounders_fail():
    wrong = eg.evaluate(_oracle(_scenes_by_frame(), wrong=True), scenes=N, seed=SEED)
    assert wrong.pointing == 0.0 and wrong.discrimination == 0.0 and wrong.box_hit < 0.2
    blind = eg.evaluate(lambda f, q: SimpleNamespace(targets=(Target(query=q[0], found=False, score=0.0),)),
                        scenes=N, seed=SEED)
    assert blind.pointing == 0.0 and blind.box_hit == 0.0 and blind.rejection == 1.0
    with pytest.raises(ConfigError, match="scenes"):
        eg.evaluate(lambda f, q: None, scenes=0)


def _bundle(precision):
    from vlmedge.embedded import embedded_bundle
    try:
        return embedded_bundle(precision)
    except ArtifactError as e:
        pytest.skip(f"embedded {precision} bundle not built yet: {e}")


# Measured with the shipped bundles (model v3: 8000 scenes) and the sub-patch peak (regions.refined_peak)
# on these 40 scenes (seed 1_000_000), evaluate_bundle:
#   fp32: pointing 100.0%, box hit 90.0%, rejection 100.0%, discrimination 94.3% (n=35)
#   int8: pointing 100.0%, box hit 90.0%, rejection 100.0%, discrimination 94.3% (n=35)
# (500 scenes, `vlmedge eval-grounding`: fp32 97.6 / 93.4 / 99.0 / 97.8, int8 97.8 / 93.6 / 99.2 / 98.0.)
# Floors sit a few points below.
FLOORS = dict(pointing=0.95, box_hit=0.85, rejection=0.92, discrimination=0.88)


@pytest.fixture(scope="module")
def reports():
    return {p: evaluate_bundle(str(_bundle(p)), scenes=40, seed=SEED) for p in ("fp32", "int8")}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_embedded_bundle_grounds_held_out_scenes(reports, precision):
    r = reports[precision]
    assert r.n_present == 40 and r.n_absent == 40 and r.n_discrimination >= 20
    for metric, floor in FLOORS.items():
        assert getattr(r, metric) >= floor, f"{precision} {metric}: {r.summary()}"


def test_int8_stays_close_to_fp32(reports):
    for metric in FLOORS:
        a, b = getattr(reports["fp32"], metric), getattr(reports["int8"], metric)
        assert abs(a - b) <= 0.06, f"{metric}: fp32 {a:.3f} vs int8 {b:.3f}"


def test_eval_grounding_cli_writes_json(tmp_path, capsys):
    from vlmedge.cli import main
    bundle = _bundle("int8")
    out = tmp_path / "r.json"
    assert main(["eval-grounding", str(bundle), "--scenes", "3", "--seed", "1000100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["scenes"] == 3 and data["seed"] == 1000100 and 0 <= data["pointing"] <= 1
    assert "pointing" in capsys.readouterr().out


def test_eval_grounding_commands_suite_cli(tmp_path, capsys):
    """`vlmedge eval-grounding --suite commands` on the shipped bundle: per-family figures in text and JSON."""
    from vlmedge.cli import main

    out = tmp_path / "commands.json"
    assert main(["eval-grounding", "--suite", "commands", "--scenes", "4", "--family", "relation",
                 "--family", "unsatisfiable", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "relation" in text and "unsatisfiable" in text and "ms/command" in text
    data = json.loads(out.read_text())
    assert set(data["families"]) == {"relation", "unsatisfiable"}
    assert all(f["n"] == 4 for f in data["families"].values())
    assert main(["eval-grounding", "--family", "relation"]) == 1  # a family without the commands suite
