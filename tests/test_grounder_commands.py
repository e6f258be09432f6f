"""Commands through the Grounder on the shipped int8 demo bundle and rendered scenes: relations, quantities,
negation, open-vocabulary fallback, errors, taught objects and their file, calibrated scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmedge.errors import ArtifactError, InputError
from vlmedge.language import CommandSyntaxError
from vlmedge.scenes.render import render_scene

SCENE = 7340013  # an orange and a purple bottle, a black cup, a green can, two bananas


@pytest.fixture(scope="module")
def grounder(embedded_int8):
    from vlmedge.runtime.grounding.grounder import Grounder

    return Grounder(embedded_int8, smoothing=False)  # the bundle expands uncoloured kinds (manifest)


@pytest.fixture(scope="module")
def scene():
    return render_scene(SCENE)


def _obj(scene, colour, kind):
    return next(o for o in scene.objects if o.color == colour and o.kind == kind)


def _inside(obj, point):
    x, y = (int(round(v)) for v in point)
    return bool(obj.mask[min(max(y, 0), obj.mask.shape[0] - 1), min(max(x, 0), obj.mask.shape[1] - 1)])


def test_relation_picks_the_other_instance_not_the_anchor(grounder, scene):
    """Before the language, "the bottle left of the purple bottle" returned the purple bottle itself."""
    res = grounder.ground(scene.frame, ["the bottle left of the purple bottle"])
    best = res.best("the bottle left of the purple bottle")
    assert best.found and _inside(_obj(scene, "orange", "bottle"), best.peak)
    assert not _inside(_obj(scene, "purple", "bottle"), best.peak)
    (anchor,) = best.anchors
    assert anchor.text == "the purple bottle"
    purple = _obj(scene, "purple", "bottle")
    px, py = (anchor.bbox[0] + anchor.bbox[2]) / 2, (anchor.bbox[1] + anchor.bbox[3]) / 2
    assert _inside(purple, (px, py))
    assert res.command("the bottle left of the purple bottle").anchors == best.anchors


def test_quantities_return_every_instance_or_nothing(grounder, scene):
    res = grounder.ground(scene.frame, ["the two bottles", "three bottles", "how many bottles", "all bottles"])
    two = [t for t in res.targets_for("the two bottles") if t.found]
    assert len(two) == 2
    assert {_inside(_obj(scene, "orange", "bottle"), t.peak) or _inside(_obj(scene, "purple", "bottle"), t.peak)
            for t in two} == {True}
    three = res.command("three bottles")
    assert not three.found and "2" in three.reason and not res.best("three bottles").found
    assert res.count("how many bottles") == 2 and res.count("all bottles") == 2


def test_a_look_alike_scoring_well_below_the_best_instance_is_not_counted():
    """The margin rule: six red cups at 0.93-0.94 and a red plate at 0.82 (held-out counting layouts of the demo
    model looked like this) are six red cups, although 0.82 passes the floor; without a margin, seven."""
    from vlmedge.language import read_command
    from vlmedge.runtime.grounding.commands import instances_by_phrase, resolve_command
    from vlmedge.runtime.grounding.results import Target

    scores = (0.94, 0.94, 0.93, 0.93, 0.93, 0.93, 0.82)
    targets = [Target("the red cup", True, s, (40 * i, 10, 40 * i + 30, 50), (40 * i + 15, 30), (40 * i + 15, 30), 1200)
               for i, s in enumerate(scores)]
    command = read_command("how many red cups")
    (phrase,) = {n.text for n in command.noun_phrases()}
    floor = resolve_command(command, {phrase: targets}, (480, 640), 100.0, 0.75)
    assert floor.count == 7
    assert resolve_command(command, {phrase: targets}, (480, 640), 100.0, 0.75, 0.1).count == 6
    assert len(instances_by_phrase({phrase: targets}, 100.0, 0.0, 0.0)[phrase]) == 2  # only the best score(s)
    assert len(instances_by_phrase({phrase: targets[-1:]}, 100.0, 0.0, 0.05)[phrase]) == 1  # alone: the best
    assert instances_by_phrase({phrase: [Target("the red cup", False, 0.2)]}, 0.0, 0.0, 0.1) == {phrase: []}


def test_the_margin_holds_for_composed_commands_but_negations():
    """Relations, counts, orderings: instances must score like the best of their phrase (on SCENE the demo
    model finds two faint 'bottle' regions on the black cup, 0.67 and 0.48 beside bottles at 0.93/0.92, and
    "the bottle left of the purple bottle" picked one of them). Negations ground 'the cup' through its colour
    variants, whose instances score unalike by design: no margin there."""
    from vlmedge.language import read_command
    from vlmedge.runtime.grounding.grounder import _keeps_best_alike

    for text, keeps in (("the red cup", False), ("the cup left of the plate", True), ("how many cups", True),
                        ("all red cups", True), ("the leftmost bottle", True), ("the cup that is not red", False),
                        ("the non-red cup left of the plate", False), ("the cup next to the bottle left of the book",
                                                                      True)):
        assert _keeps_best_alike(read_command(text)) is keeps, text


def test_the_instance_margin_comes_from_the_manifest_and_is_checked(embedded_int8):
    from vlmedge.errors import ConfigError
    from vlmedge.manifest import GroundingDefaults
    from vlmedge.runtime.grounding.grounder import Grounder

    g = Grounder(embedded_int8, smoothing=False)
    assert g.instance_score_margin == json.loads((embedded_int8 / "manifest.json").read_text())["grounding"].get(
        "instance_score_margin")
    assert Grounder(g.encoders, instance_score_margin=0.2).instance_score_margin == 0.2
    with pytest.raises(ConfigError, match="instance_score_margin"):
        Grounder(g.encoders, instance_score_margin=1.5)
    with pytest.raises(ConfigError, match="grounding.instance_score_margin"):
        GroundingDefaults(instance_score_margin=-0.1)
    assert GroundingDefaults(instance_score_margin=0.1).to_dict()["instance_score_margin"] == 0.1


def test_count_of_an_absent_kind_is_zero(grounder, scene):
    res = grounder.ground(scene.frame, ["how many balls"])
    assert res.count("how many balls") == 0


def test_unsatisfiable_relation_is_not_found_with_a_reason(grounder, scene):
    res = grounder.ground(scene.frame, ["the bottle left of the red ball"])
    c = res.command("the bottle left of the red ball")
    assert not c.found and c.reason and "ball" in c.reason
    assert not res.best("the bottle left of the red ball").found
    assert res.best("the bottle left of the red ball").bbox is None


def test_negation_excludes_the_named_colour(grounder, scene):
    res = grounder.ground(scene.frame, ["the bottle that is not purple", "the non-orange bottle"])
    assert _inside(_obj(scene, "orange", "bottle"), res.best("the bottle that is not purple").peak)
    assert _inside(_obj(scene, "purple", "bottle"), res.best("the non-orange bottle").peak)


@pytest.mark.parametrize("seed", [900040, 900094, 900185, 900313])
def test_negation_splits_a_region_holding_the_excluded_colour_and_another(grounder, seed):
    """A red cup touching a white one made one region of "the cup"; "the non-red cup" removed it whole ("every
    cup found is red"). Negations now split regions into instances, as counting does (validation layouts, seeds
    900 000+: negation 91.25% -> 94.25% on 400; these four went from not found to right)."""
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.command_eval import score
    from vlmedge.scenes.layouts import make_case

    case = make_case("negation", seed)

    def answer(g):
        c = g.ground(case.frame, [case.command]).command(case.command)
        return c, score(case, c)

    c, right = answer(grounder)
    assert right, (case.command, c.reason)
    whole, right_whole = answer(Grounder(grounder.encoders, smoothing=False, split_instances=False))
    assert not right_whole and not whole.found and whole.reason.startswith("every ")


def test_plain_noun_phrases_keep_the_plain_path(grounder, scene):
    """A plain phrase is grounded as given (no normalisation) and every region is a target, as before."""
    res = grounder.ground(scene.frame, ["a purple bottle"])
    c = res.command("a purple bottle")
    assert c.parsed.is_plain and c.count is None and c.anchors == ()
    assert res.best("a purple bottle").found and _inside(_obj(scene, "purple", "bottle"),
                                                         res.best("a purple bottle").peak)


def test_open_vocabulary_text_is_grounded_as_given_and_malformed_commands_are_errors(grounder, scene):
    res = grounder.ground(scene.frame, ["person wearing a red hat"])  # no grammar word: a description
    assert res.command("person wearing a red hat").parsed.is_plain
    with pytest.raises(CommandSyntaxError, match="left of"):
        grounder.ground(scene.frame, ["the cup lefft of the plate"])
    with pytest.raises(CommandSyntaxError, match="needs an object"):
        grounder.ground(scene.frame, ["the cup left of"])


def test_scores_are_calibrated_not_saturated(grounder, scene):
    """Scores are the probability at the calibration temperature: below 1.0 even for clear objects, and
    ordered like the detection probability."""
    res = grounder.ground(scene.frame, ["the purple bottle", "the orange bottle", "the black cup"])
    scores = [res.best(q).score for q in res.queries]
    assert all(res.best(q).found for q in res.queries)
    assert all(0.3 < s < 0.995 for s in scores), scores
    from vlmedge.runtime.grounding.grounder import Grounder

    raw = Grounder(grounder.encoders, smoothing=False, score_temperature=1.0).ground(scene.frame, list(res.queries))
    assert all(raw.best(q).score >= res.best(q).score for q in res.queries)


def test_teach_from_a_box_then_use_the_name_in_a_relation(embedded_int8, scene, tmp_path):
    from vlmedge.runtime.grounding.grounder import Grounder

    path = tmp_path / "taught.json"
    g = Grounder(embedded_int8, smoothing=False, taught=path)
    cup = _obj(scene, "black", "cup")
    exemplar = g.teach("my mug", scene.frame, cup.bbox)
    assert exemplar.shape == (g.manifest.embed_dim,) and abs(float(np.linalg.norm(exemplar)) - 1) < 1e-5
    res = g.ground(scene.frame, ["my mug", "the bottle nearest to my mug"])
    # found where the cup is: its box over the cup's (IoU >= 0.5). Pointing is the taught family's measure
    # (`eval-grounding --suite commands`, 500 scenes); on this scene model v4's peak lies on the cup's box a few
    # pixels off its visible mask (8 px, inside the cup's box).
    bx0, by0, bx1, by1 = res.best("my mug").bbox
    cx0, cy0, cx1, cy1 = cup.bbox
    inter = max(0, min(bx1, cx1) - max(bx0, cx0)) * max(0, min(by1, cy1) - max(by0, cy0))
    assert inter / ((bx1 - bx0) * (by1 - by0) + (cx1 - cx0) * (cy1 - cy0) - inter) >= 0.5
    assert res.command("the bottle nearest to my mug").anchors[0].text == "my mug"

    # the file survives a restart; it belongs to this model and is plain JSON
    data = json.loads(path.read_text())
    assert data["model_id"] == g.manifest.model_id and list(data["objects"]) == ["my mug"]
    again = Grounder(embedded_int8, smoothing=False, taught=path)
    np.testing.assert_allclose(again.taught.embedding("my mug"), exemplar, atol=1e-6)
    again.forget("my mug")
    assert json.loads(path.read_text())["objects"] == {}
    with pytest.raises(InputError, match="never taught"):
        again.forget("my mug")


def test_teach_from_crops_and_bad_input(grounder, scene):
    cup = _obj(scene, "black", "cup")
    x0, y0, x1, y1 = cup.bbox
    grounder.teach("crop cup", crops=[scene.frame[y0:y1, x0:x1]])
    assert "crop cup" in grounder.taught
    grounder.forget("crop cup")
    with pytest.raises(InputError, match="either a frame and a box"):
        grounder.teach("x")
    with pytest.raises(InputError, match="x0 < x1"):
        grounder.teach("x", scene.frame, (10, 10, 5, 20))
    with pytest.raises(InputError, match="outside"):
        grounder.teach("x", scene.frame, (700, 10, 720, 20))
    with pytest.raises(InputError, match="1 to 5"):
        grounder.teach("x", crops=[scene.frame] * 6)


def test_a_taught_file_from_another_model_is_refused(embedded_int8, tmp_path):
    from vlmedge.runtime.grounding.grounder import Grounder

    path = tmp_path / "taught.json"
    path.write_text(json.dumps({"format": "vlmedge-taught-objects", "version": 1, "model_id": "other",
                                "embed_dim": 128, "objects": {}}))
    with pytest.raises(ArtifactError, match="belongs to model 'other'"):
        Grounder(embedded_int8, taught=path)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot be read"):
        Grounder(embedded_int8, taught=path)


def test_results_answer_to_the_query_as_given(grounder, scene):
    res = grounder.ground(scene.frame, ["  the bottle left of the purple bottle "])
    assert res.best("  the bottle left of the purple bottle ").found
    assert res.command("  the bottle left of the purple bottle ").command == res.queries[0]


def test_a_teach_that_cannot_be_written_teaches_nothing(embedded_int8, scene, tmp_path):
    from vlmedge.runtime.grounding.grounder import Grounder

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the taught file's folder should be")
    g = Grounder(embedded_int8, smoothing=False, taught=blocker / "taught.json")
    with pytest.raises(ArtifactError, match="cannot write"):
        g.teach("my mug", scene.frame, _obj(scene, "black", "cup").bbox)
    assert "my mug" not in g.taught


@pytest.mark.parametrize("kind,color,gap,seed", [("cup", "red", 0, 11), ("bottle", "red", -10, 14),
                                                    ("ball", "yellow", -15, 16), ("can", "orange", 0, 19)])
def test_touching_objects_of_one_description_are_counted_apart(grounder, kind, color, gap, seed):
    """Two objects of one description side by side form one region of the map; a command splits it into two
    instances on the frame's pixels, while a plain query keeps the region whole (its path and speed)."""
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.scenes.layouts import row_scene

    frame, objects = row_scene(seed, kind, color, 2, gap)
    phrase, count, left = f"the {color} {kind}", f"how many {color} {kind}s", f"the leftmost {color} {kind}"
    res = grounder.ground(frame, [phrase, count, left])
    assert len([t for t in res.targets_for(phrase) if t.found]) == 1  # one region, as before
    assert res.count(count) == 2
    assert _inside(min(objects, key=lambda o: o.bbox[0]), res.best(left).peak)
    off = Grounder(grounder.encoders, smoothing=False, split_instances=False)
    assert off.ground(frame, [count]).count(count) == 1


def test_the_headless_line_shows_counts_and_reasons(grounder, scene):
    from vlmedge.runtime.app import _format_line, _Stats

    res = grounder.ground(scene.frame, ["how many bottles", "the bottle left of the red ball"])
    line = _format_line(7, res, _Stats())
    assert "'how many bottles'" in line and "count=2" in line
    assert "not found" in line and "ball" in line.split("'the bottle left of the red ball'")[1]
