"""Command scenes (vlmedge.scenes.layouts) and their benchmark (vlmedge.scenes.command_eval): determinism, ground
truth checked against the masks with plain geometry, and a scorer that an oracle passes and a wrong oracle fails."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from vlmedge.errors import ConfigError, InputError
from vlmedge.scenes import command_eval as ce
from vlmedge.scenes import layouts as L
from vlmedge.scenes import render as syn

SEED = L.EVAL_SEED_BASE
SMALL = (240, 320)  # half size: the same layouts (margins scale with the frame), four times cheaper
N = 4  # scenes per family
_CACHE: dict = {}


def _case(family: str, seed: int, size=SMALL) -> L.CommandCase:
    key = (family, seed, tuple(size))
    if key not in _CACHE:
        _CACHE[key] = L.make_case(family, seed, size)
    return _CACHE[key]


def _cases(family: str, n: int = N) -> list[L.CommandCase]:
    return [_case(family, SEED + i) for i in range(n)]


@pytest.fixture
def cached(monkeypatch):
    """evaluate_commands draws its cases through the test cache, so each scene is rendered once per session."""
    monkeypatch.setattr(ce, "make_case", _case)


def _centre(o: syn.SceneObject) -> tuple[float, float]:
    ys, xs = np.nonzero(o.mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    assert o.bbox == (x0, y0, x1, y1), "bbox must be the tight box of the visible mask"
    return (x0 + x1) / 2, (y0 + y1) / 2


def _x_overlap(a, b) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0]))


def _same(case: L.CommandCase, i: int) -> list[int]:
    """Objects like answer ``i`` (same kind and colour), itself included."""
    o = case.objects[i]
    return [k for k, p in enumerate(case.objects) if (p.kind, p.color) == (o.kind, o.color)]


# ----------------------------------------------------------------------------- renderer additions
def test_sized_sprite_is_make_sprite_with_the_size_given():
    lo, hi = syn.size_range("cup")
    a = syn.make_sprite(np.random.default_rng(3), "cup", "red", 1.1, (0.2, 0.5))
    rng = np.random.default_rng(3)
    b = syn.sized_sprite(rng, "cup", "red", rng.uniform(lo, hi) * 1.1, (0.2, 0.5))
    assert np.array_equal(a.img, b.img) and np.array_equal(a.alpha, b.alpha) and a.shadow_off == b.shadow_off
    with pytest.raises(ConfigError, match="did you mean 'cup'"):
        syn.sized_sprite(rng, "cupp", "red", 100)


def test_visible_masks_are_the_masks_compose_draws():
    rng = np.random.default_rng(0)
    stage = syn.draw_stage(rng, SMALL)
    placed = [(syn.make_sprite(rng, k, "blue", 0.5), x, y) for k, x, y in
              (("plate", 20, 60), ("cup", 60, 80), ("ball", 200, 120), ("book", 280, 200))]  # the book sticks out
    masks = syn.visible_masks(placed, SMALL)
    scene = syn.render_placed(rng, stage, placed)
    assert len(scene.objects) == 4 and scene.frame.shape == (*SMALL, 3) and scene.frame.dtype == np.uint8
    for m, o in zip(masks, scene.objects):
        assert np.array_equal(m, o.mask)
    assert (masks[0] & masks[1]).sum() == 0 and masks[0].sum() < (placed[0][0].alpha >= 0.5).sum(), "cup hides plate"


# ----------------------------------------------------------------------------- generators
@pytest.mark.parametrize("family", L.FAMILIES)
def test_each_family_is_deterministic_per_seed_and_differs_between_seeds(family):
    a, b = _case(family, SEED), L.make_case(family, SEED, SMALL)
    assert np.array_equal(a.frame, b.frame) and a.frame.shape == (*SMALL, 3)
    assert (a.command, a.answer, a.count, a.form, a.anchors) == (b.command, b.answer, b.count, b.form, b.anchors)
    assert [(o.kind, o.color, o.bbox) for o in a.objects] == [(o.kind, o.color, o.bbox) for o in b.objects]
    if family == "taught":
        assert np.array_equal(a.teach.frame, b.teach.frame) and a.teach.box == b.teach.box
    assert not np.array_equal(a.frame, _case(family, SEED + 1).frame)


def test_families_do_not_share_scenes_and_full_size_works():
    frames = [L.make_case(f, SEED).frame for f in ("relation", "ordinal", "counting")]
    assert frames[0].shape == (480, 640, 3)
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    assert np.array_equal(_case("plain", SEED).frame, syn.render_scene(SEED, SMALL).frame), "plain = eval scenes"


def test_bad_arguments_name_the_problem():
    with pytest.raises(ConfigError, match="did you mean 'relation'"):
        L.make_case("relations", SEED)
    with pytest.raises(ConfigError, match="seed"):
        L.make_case("relation", -1)
    with pytest.raises(ConfigError, match="size"):
        L.make_case("relation", SEED, (10, 10))
    with pytest.raises(InputError, match="answer"):
        L.CommandCase("plain", 0, "x", np.zeros((4, 4, 3), np.uint8), (), (3,), "present")


@pytest.mark.parametrize("family", [f for f in L.FAMILIES if f != "plain"])
def test_layouts_keep_objects_visible_and_instances_apart(family):
    for case in _cases(family):
        unit = case.frame.shape[0] / 480
        for i, o in enumerate(case.objects):
            assert o.area >= L.MIN_AREA * unit ** 2, f"{case.command!r}: object {i} is too small to ask about"
            for j, p in enumerate(case.objects[i + 1:], i + 1):
                assert not (o.mask & p.mask).any()
                if o.kind == p.kind:
                    gap = math.hypot(max(0, p.bbox[0] - o.bbox[2], o.bbox[0] - p.bbox[2]),
                                     max(0, p.bbox[1] - o.bbox[3], o.bbox[1] - p.bbox[3]))
                    assert gap >= L.SEPARATION_PX * unit - 1e-6, f"{case.command!r}: objects {i}, {j} touch"


def test_relation_answers_follow_the_geometry():
    seen = set()
    for seed in range(SEED, SEED + 24):
        case = _case("relation", seed)
        (t,), rel = case.answer, case.form
        seen.add(rel)
        others = [k for k in _same(case, t) if k != t and k not in case.anchors]
        assert others, f"{case.command!r}: the relation must be needed (a second instance)"
        a = case.objects[case.anchors[0]]
        ab, (ax, ay) = a.bbox, _centre(a)
        (tx, ty), tb = _centre(case.objects[t]), case.objects[t].bbox
        dist = {k: math.dist(_centre(case.objects[k]), (ax, ay)) for k in [t, *others]}
        margin = L.EDGE_MARGIN * (ab[2] - ab[0] if rel in ("left_of", "right_of") else ab[3] - ab[1])
        if rel == "left_of":
            assert tx <= ab[0] - margin and all(_centre(case.objects[k])[0] > (ab[0] + ab[2]) / 2 for k in others)
        elif rel == "right_of":
            assert tx >= ab[2] + margin and all(_centre(case.objects[k])[0] < (ab[0] + ab[2]) / 2 for k in others)
        elif rel == "above":
            assert ty <= ab[1] - margin and all(_centre(case.objects[k])[1] > (ab[1] + ab[3]) / 2 for k in others)
        elif rel == "below":
            assert ty >= ab[3] + margin and all(_centre(case.objects[k])[1] < (ab[1] + ab[3]) / 2 for k in others)
        elif rel == "on":
            assert ab[1] < tb[3] < ab[3] and _x_overlap(tb, ab) >= 0.5 * (tb[2] - tb[0])
            assert t > case.anchors[0], "what stands on the anchor is drawn over it"
        elif rel in ("in_front_of", "behind"):
            nearer = (lambda b, ab=ab: b[3] > ab[3]) if rel == "in_front_of" else (lambda b, ab=ab: b[3] < ab[3])
            assert nearer(tb) and _x_overlap(tb, ab) > 0
            assert all(not nearer(case.objects[k].bbox) or _x_overlap(case.objects[k].bbox, ab) == 0 for k in others)
        elif rel in ("next_to", "nearest"):
            assert all(dist[t] < dist[k] for k in others)
        elif rel == "farthest":
            assert all(dist[t] > dist[k] for k in others)
        elif rel == "between":
            p, q = (_centre(case.objects[k]) for k in case.anchors)
            v = (q[0] - p[0], q[1] - p[1])
            proj = ((tx - p[0]) * v[0] + (ty - p[1]) * v[1]) / (v[0] ** 2 + v[1] ** 2)
            assert 0 < proj < 1
    assert len(seen) >= 8, f"relations drawn: {seen}"


def test_ordinal_answers_follow_the_geometry_with_margins():
    for seed in range(SEED, SEED + 16):
        case = _case("ordinal", seed)
        (t,) = case.answer
        group = _same(case, t)
        if not re.search(rf"\b{case.objects[t].color}\b", case.command.lower()):
            group = [k for k, o in enumerate(case.objects) if o.kind == case.objects[t].kind]  # "the leftmost cup"
        form = case.form
        if form in ("largest", "smallest"):
            areas = sorted((case.objects[k].area for k in group), reverse=form == "largest")
            assert case.objects[t].area == areas[0] and len(group) > 1
            assert max(areas[:2]) >= L.SIZE_RATIO * min(areas[:2])
            continue
        m = re.match(r"(\w+)_from_(\w+)", form)
        index, side = (L._ORDINAL_WORDS.index(m[1]) + 1, m[2]) if m else (1, {
            "leftmost": "left", "rightmost": "right", "topmost": "top", "lowest": "bottom"}[form])
        axis, sign = (0 if side in ("left", "right") else 1), (-1 if side in ("right", "bottom") else 1)
        order = sorted(group, key=lambda k: sign * _centre(case.objects[k])[axis])
        assert order[index - 1] == t, f"{case.command!r}: {order}"
        keys = sorted(_centre(case.objects[k])[axis] for k in group)
        extent = np.median([case.objects[k].bbox[2 + axis] - case.objects[k].bbox[axis] for k in group])
        pos = keys.index(_centre(case.objects[t])[axis])
        near = [keys[j] for j in (pos - 1, pos + 1) if 0 <= j < len(keys)]
        assert all(abs(keys[pos] - k) >= L.ORDER_MARGIN * extent for k in near)


def test_counts_and_quantities_match_the_objects():
    counts = set()
    for seed in range(SEED, SEED + 12):
        case = _case("counting", seed)
        color, plural = re.search(r"how many (\w+) (\w+)", case.command.lower()).groups()
        matching = [i for i, o in enumerate(case.objects) if o.color == color and plural.startswith(o.kind)]
        assert case.count == len(matching) == len(case.answer) and case.expects == "count"
        assert len(case.objects) > len(matching), "distractors are part of every counting scene"
        counts.add(case.count)
    assert {0, 6} & counts and len(counts) >= 4, counts
    for case in _cases("quantity", 8):
        assert case.plural
        if case.form == "wrong_number":
            assert case.answer == () and case.expects == "none"
        else:
            assert len({(case.objects[i].kind, case.objects[i].color) for i in case.answer}) == 1
            assert len(case.answer) == len(_same(case, case.answer[0]))


def test_negation_nested_taught_and_unsatisfiable_truths():
    for case in _cases("negation"):
        (t,) = case.answer
        negated = re.search(r"(?:non-|not )(\w+)", case.command.lower())[1]
        kind = case.objects[t].kind
        assert case.objects[t].color != negated
        assert [i for i, o in enumerate(case.objects) if o.kind == kind and o.color != negated] == [t]
        assert any(o.kind == kind and o.color == negated for o in case.objects), "the negated colour is present"
    for seed in range(SEED, SEED + 12):
        case = _case("nested", seed)
        (t,), (_, a1) = case.answer, case.anchors
        outer = case.form.split("+")[0]
        assert len(_same(case, a1)) == 2 and len(_same(case, t)) == 2, "two of each: both relations are needed"
        other = next(k for k in _same(case, t) if k != t)
        (tx, _), (ox, _), a1b = _centre(case.objects[t]), _centre(case.objects[other]), case.objects[a1].bbox
        if outer == "left_of":
            assert tx < a1b[0] < ox
        elif outer == "right_of":
            assert tx > a1b[2] > ox
        else:
            a1c = _centre(case.objects[a1])
            assert math.dist(_centre(case.objects[t]), a1c) < math.dist(_centre(case.objects[other]), a1c)
    for case in _cases("taught"):
        (t,) = case.answer
        o = case.objects[t]
        assert (o.kind, o.color) == (case.teach.kind, case.teach.color) and case.teach.name in case.command.lower()
        assert len(_same(case, t)) == 1 and sum(p.kind == o.kind for p in case.objects) >= 2
        x0, y0, x1, y1 = case.teach.box
        assert 0 <= x0 < x1 <= SMALL[1] and 0 <= y0 < y1 <= SMALL[0]
        assert not np.array_equal(case.teach.frame, case.frame), "taught in one scene, asked in another"
    forms = set()
    for seed in range(SEED, SEED + 12):
        case = _case("unsatisfiable", seed)
        assert case.answer == () and case.expects == "none"
        forms.add(case.form)
    assert len(forms) >= 4, forms


def test_geometry_is_three_valued():
    anchor = (100, 100, 200, 160)
    assert L.directional("left_of", (20, 100, 60, 160), anchor) is True
    assert L.directional("left_of", (150, 100, 260, 160), anchor) is False
    assert L.directional("left_of", (80, 100, 130, 160), anchor) is None  # centre inside the near half: too close
    assert L.directional("on", (120, 60, 160, 140), anchor) is True
    assert L.directional("on", (300, 60, 340, 140), anchor) is False
    assert L.between((180, 100, 220, 140), (0, 100, 40, 140), (360, 100, 400, 140)) is True
    assert L.between((500, 100, 540, 140), (0, 100, 40, 140), (360, 100, 400, 140)) is False
    assert L.by_distance("nearest", [(210, 100, 240, 160), (400, 100, 440, 160)], anchor) == 0
    assert L.by_distance("nearest", [(210, 100, 240, 160), (205, 100, 235, 160)], anchor) is None
    assert L.by_distance("farthest", [(210, 100, 240, 160), (400, 100, 440, 160)], anchor) == 1


# ----------------------------------------------------------------------------- scoring
def _point(o: syn.SceneObject) -> tuple[float, float]:
    ys, xs = np.nonzero(o.mask)
    return float(xs[len(xs) // 2]), float(ys[len(ys) // 2])


def _oracle(wrong: bool = False, taught: set | None = None, extra: bool = False):
    """Answers from the ground truth (or, ``wrong``, the nearest plausible mistake of each kind; ``extra``: a
    singular answer followed by a second, wrong point)."""
    by_frame = {}

    def ground(frame, command):
        case = by_frame[frame.tobytes()]
        if case.teach is not None:
            assert taught == {case.teach.name}, "teach() must come before ground() and forget() after"
        if case.expects == "count":
            return SimpleNamespace(found=True, points=[], count=case.count + wrong)
        if case.expects == "none":
            return SimpleNamespace(found=wrong, points=[_point(case.objects[0])] if wrong else [], count=None)
        answer = list(case.answer)
        if wrong and case.expects == "point":
            t = case.objects[answer[0]]
            others = [i for i, o in enumerate(case.objects) if o.kind == t.kind and i != answer[0]]
            answer = others[:1] or [(answer[0] + 1) % len(case.objects)]  # the other instance of the same kind
        elif wrong:
            answer = answer[:-1] if len(answer) > 1 else answer * 2  # one missed, or one pointed at twice
        if extra and case.expects == "point":
            answer.append((answer[0] + 1) % len(case.objects))
        return SimpleNamespace(found=True, points=[_point(case.objects[i]) for i in answer], count=len(answer))

    def register(family, n=N):
        for case in _cases(family, n):
            by_frame[case.frame.tobytes()] = case

    return ground, register


def _teacher():
    names: set = set()
    return names, (lambda name, frame, box: names.add(name)), names.discard


def test_oracle_scores_perfectly_and_wrong_oracle_fails_in_every_family(cached):
    names, teach, forget = _teacher()
    for wrong in (False, True):
        ground, register = _oracle(wrong, names)
        for fam in L.FAMILIES:
            register(fam)
        report = ce.evaluate_commands(ground, teach, forget, scenes=N, seed=SEED, size=SMALL)
        assert [f.family for f in report.families] == list(L.FAMILIES)
        for f in report.families:
            assert f.n == N
            if wrong:
                assert f.accuracy == 0.0 and len(f.failures) == N, f.family
                assert f.failures[0].expected != f.failures[0].got
            else:
                assert f.accuracy == 1.0 and not f.failures, (f.family, f.failures)
        assert not names, "every taught name is forgotten again"


def test_blind_and_crashing_grounders(cached):
    blind = ce.evaluate_commands(lambda f, c: SimpleNamespace(found=False, points=[], count=None),
                                 families=("plain", "relation", "unsatisfiable"), scenes=N, seed=SEED, size=SMALL)
    assert blind.family("unsatisfiable").accuracy == 1.0 and blind.family("relation").accuracy == 0.0
    assert blind.family("plain").failures[0].got == "not found"
    everything = ce.evaluate_commands(lambda f, c: SimpleNamespace(found=False, points=[], count=0), scenes=1,
                                      seed=SEED, size=SMALL)
    assert [f.family for f in everything.families] == [f for f in L.FAMILIES if f != "taught"], "no teach: no taught"

    def unreadable(frame, command):
        raise InputError(f"cannot parse {command!r}\n  ^^^")

    r = ce.evaluate_commands(unreadable, families=("negation",), scenes=2, seed=SEED, size=SMALL)
    assert r.family("negation").accuracy == 0.0 and r.family("negation").failures[0].got.startswith("raised InputError")

    def broken(frame, command):
        raise RuntimeError("a bug in the grounder")

    with pytest.raises(RuntimeError, match="bug"):
        ce.evaluate_commands(broken, families=("negation",), scenes=1, seed=SEED, size=SMALL)


def test_plural_answers_need_every_object_exactly_once():
    case = next(c for seed in range(SEED, SEED + 20) if len((c := _case("quantity", seed)).answer) >= 2)
    pts = [_point(case.objects[i]) for i in case.answer]
    other = next(i for i in range(len(case.objects)) if i not in case.answer)
    assert ce.score(case, SimpleNamespace(found=True, points=pts, count=None))
    assert ce.score(case, SimpleNamespace(found=True, points=pts[::-1], count=None))
    assert not ce.score(case, SimpleNamespace(found=True, points=pts[1:], count=None))
    assert not ce.score(case, SimpleNamespace(found=True, points=pts + [pts[0]], count=None))
    assert not ce.score(case, SimpleNamespace(found=True, points=pts + [_point(case.objects[other])], count=None))
    assert not ce.score(case, SimpleNamespace(found=False, points=pts, count=None))
    single = _case("relation", SEED)
    p = _point(single.objects[single.answer[0]])
    elsewhere = _point(single.objects[next(i for i in range(len(single.objects)) if i != single.answer[0])])
    assert ce.score(single, SimpleNamespace(found=True, points=[p], count=None))
    assert ce.score(single, SimpleNamespace(found=True, points=[p, elsewhere], count=None)), "the first is the pick"
    assert not ce.score(single, SimpleNamespace(found=True, points=[elsewhere, p], count=None))
    assert not ce.score(single, SimpleNamespace(found=True, points=[], count=None))


def test_report_outputs_and_option_checks(cached, tmp_path):
    ground, register = _oracle()
    register("relation", 2)
    register("counting", 2)
    report = ce.evaluate_commands(ground, families=("relation", "counting"), scenes=2, seed=SEED, size=SMALL)
    lines = report.summary()
    assert len(lines) == 3 and "relation" in lines[0] and "every goal met" in lines[-1]
    assert report.family("relation").extra_points == 0 and "extra" not in lines[0]
    ground2, register2 = _oracle(extra=True)
    register2("relation", 2)
    sloppy = ce.evaluate_commands(ground2, families=("relation",), scenes=2, seed=SEED, size=SMALL)
    assert sloppy.family("relation").accuracy == 1.0 and sloppy.family("relation").extra_points == 2
    assert "2 singular answers with extra points" in sloppy.summary()[0]
    table = report.table().splitlines()
    assert table[0].startswith("| family") and len(table) == 4 and "100.0%" in table[2]
    both = ce.comparison_table({"fp32": report, "int8": report}).splitlines()
    assert "fp32" in both[0] and "int8" in both[0] and len(both) == 4
    ce.write_json(report, tmp_path / "r.json", bundle="b")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["bundle"] == "b" and data["families"]["counting"]["accuracy"] == 1.0
    assert report.family("counting").goal == ce.GOALS["counting"]
    with pytest.raises(ConfigError, match="did you mean 'counting'"):
        report.family("countin")
    with pytest.raises(ConfigError, match="teach"):
        ce.evaluate_commands(ground, families=("taught",))
    with pytest.raises(ConfigError, match="string"):
        ce.evaluate_commands(ground, families="relation")
    with pytest.raises(ConfigError, match="scenes"):
        ce.evaluate_commands(ground, scenes=0)
    with pytest.raises(ConfigError, match="did you mean 'nested'"):
        ce.evaluate_commands(ground, families=("nestd",))
