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
    assert _inside(cup, res.best("my mug").peak)
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
