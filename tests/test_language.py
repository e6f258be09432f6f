"""The command language: parsing every supported form, syntax errors that point at the word, and resolution on
hand-built instance sets where a wrong rule would pick a distractor."""

import json

import numpy as np
import pytest

from vlmedge.errors import InputError
from vlmedge.language import (
    Command,
    CommandSyntaxError,
    Instance,
    Negated,
    NounPhrase,
    Quantity,
    Relation,
    Select,
    is_teach,
    parse,
    resolve,
)

H, W = 480, 640


def box(x0, y0, x1, y1, score=1.0, mask=None):
    return Instance.from_box((x0, y0, x1, y1), score=score, mask=mask)


def cup(kind="cup", colour=None, plural=False):
    return NounPhrase(kind=kind, colour=colour, plural=plural)


# --- parsing: noun phrases ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["the red cup", "a red cup", "red cup", "The RED Cup", "  the   red  cup . ",
                                  "an red cup?", "the red cup!"])
def test_noun_phrase_forms_normalise_to_one_grounding_text(text):
    cmd = parse(text)
    assert cmd.root == NounPhrase("cup", "red", False)
    assert cmd.root.text == "the red cup"
    assert cmd.kind == "single" and cmd.is_plain
    assert [p.text for p in cmd.noun_phrases()] == ["the red cup"]


@pytest.mark.parametrize("text,kind,plural", [
    ("cups", "cup", True), ("the boxes", "box", True), ("bottles", "bottle", True), ("glasses", "glass", True),
    ("batteries", "battery", True), ("knives", "knife", True), ("shoes", "shoe", True), ("dishes", "dish", True),
    ("the glass", "glass", False), ("the bus", "bus", False), ("scissors", "scissors", False),
    ("tennis balls", "tennis ball", True), ("the coffee mug", "coffee mug", False),
    ("bags of chips", "bag of chips", True), ("the cup of coffee", "cup of coffee", False),
])
def test_plural_kinds_are_singularised(text, kind, plural):
    root = parse(text).root
    assert (root.kind, root.plural, root.colour) == (kind, plural, None)
    assert root.text == f"the {kind}"
    assert parse(text).kind == ("plural" if plural else "single")


def test_plural_with_colour_is_a_plural_command_not_plain():
    cmd = parse("Red Cups")
    assert cmd.root == NounPhrase("cup", "red", True)
    assert cmd.kind == "plural" and not cmd.is_plain


def test_colour_word_alone_is_the_object():
    assert parse("the orange").root == NounPhrase("orange")
    assert parse("the orange orange").root == NounPhrase("orange", "orange")


# --- parsing: relations -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phrase,relation", [
    ("left of", "left_of"), ("to the left of", "left_of"), ("right of", "right_of"),
    ("to the right of", "right_of"), ("above", "above"), ("below", "below"), ("under", "below"),
    ("beneath", "below"), ("on", "on"), ("on top of", "on"), ("next to", "next_to"), ("beside", "next_to"),
    ("near", "next_to"), ("nearest to", "nearest"), ("closest to", "nearest"), ("farthest from", "farthest"),
    ("furthest from", "farthest"), ("in front of", "in_front_of"), ("behind", "behind"),
    ("that is left of", "left_of"), ("which is on top of", "on"), ("that's behind", "behind"),
])
def test_relation_phrases(phrase, relation):
    cmd = parse(f"the cup {phrase} the plate")
    assert cmd.root == Relation(relation, cup(), cup("plate"))
    assert [p.text for p in cmd.noun_phrases()] == ["the cup", "the plate"]
    assert cmd.kind == "single" and not cmd.is_plain


def test_relation_without_articles_and_with_odd_spacing():
    assert parse("Cup   LEFT of  plate.").root == Relation("left_of", cup(), cup("plate"))


def test_between_has_two_anchors():
    cmd = parse("the cup between the plate and a red bowl")
    assert cmd.root == Relation("between", cup(), cup("plate"), cup("bowl", "red"))
    assert [p.text for p in cmd.noun_phrases()] == ["the cup", "the plate", "the red bowl"]


def test_nesting_is_right_associative_to_depth_two():
    cmd = parse("the cup next to the bottle left of the book")
    assert cmd.root == Relation("next_to", cup(), Relation("left_of", cup("bottle"), cup("book")))
    assert cmd.depth == 2
    assert [p.text for p in cmd.noun_phrases()] == ["the cup", "the bottle", "the book"]
    assert cmd.describe() == "the cup next to (the bottle left of the book)"


def test_between_with_a_nested_second_anchor():
    cmd = parse("the cup between the plate and the bottle left of the book")
    assert cmd.root == Relation("between", cup(), cup("plate"), Relation("left_of", cup("bottle"), cup("book")))


def test_plural_subject_of_relation_makes_a_plural_command():
    cmd = parse("the cups left of the plate")
    assert cmd.root == Relation("left_of", cup(plural=True), cup("plate"))
    assert cmd.kind == "plural"


# --- parsing: ordinals, superlatives, quantities, negation ---------------------------------------------------------

@pytest.mark.parametrize("text,how,index,direction", [
    ("the leftmost cup", "leftmost", 1, "left"), ("the rightmost cup", "rightmost", 1, "right"),
    ("the topmost cup", "topmost", 1, "top"), ("the highest cup", "topmost", 1, "top"),
    ("the lowest cup", "lowest", 1, "bottom"), ("the bottommost cup", "lowest", 1, "bottom"),
    ("the second cup from the left", "ordinal", 2, "left"), ("the 2nd cup from the right", "ordinal", 2, "right"),
    ("the third cup", "ordinal", 3, "left"), ("the fifth cup from the top", "ordinal", 5, "top"),
    ("the 1st cup from bottom", "ordinal", 1, "bottom"), ("the largest cup", "largest", 1, None),
    ("the biggest cup", "largest", 1, None), ("the smallest cup", "smallest", 1, None),
    ("the second largest cup", "largest", 2, None), ("the cup on the left", "leftmost", 1, "left"),
])
def test_selections(text, how, index, direction):
    cmd = parse(text)
    assert cmd.root == Select(how, index, direction, cup())
    assert cmd.kind == "single"


def test_selection_applies_to_the_whole_relation_phrase():
    assert parse("the leftmost red cup left of the plate").root == Select(
        "leftmost", 1, "left", Relation("left_of", cup(colour="red"), cup("plate")))


@pytest.mark.parametrize("text,mode,n,plural", [
    ("all cups", "all", None, True), ("every cup", "all", None, False), ("all the cups", "all", None, True),
    ("all of the cups", "all", None, True), ("each cup", "all", None, False), ("two cups", "exactly", 2, True),
    ("six cups", "exactly", 6, True), ("3 cups", "exactly", 3, True), ("the two cups", "exactly", 2, True),
    ("how many cups", "count", None, True), ("How many cups are there?", "count", None, True),
])
def test_quantities(text, mode, n, plural):
    cmd = parse(text)
    assert cmd.root == Quantity(mode, n, cup(plural=plural))
    assert cmd.kind == ("count" if mode == "count" else "plural")


def test_one_is_singular():
    cmd = parse("one cup")
    assert cmd.root == cup() and cmd.kind == "single" and cmd.is_plain


def test_count_of_a_relation_with_copula():
    cmd = parse("how many cups are on the table")
    assert cmd.root == Quantity("count", None, Relation("on", cup(plural=True), cup("table")))


@pytest.mark.parametrize("text", ["the cup that is not red", "the cup that isn't red", "the non-red cup",
                                  "the non red cup", "a cup which is not red"])
def test_negation_forms(text):
    cmd = parse(text)
    assert cmd.root == Negated(cup(), "red")
    assert [p.text for p in cmd.noun_phrases()] == ["the cup", "the red cup"]


def test_negation_then_relation_and_non_colour_words_stay_in_the_name():
    assert parse("the cup that is not red left of the plate").root == Relation(
        "left_of", Negated(cup(), "red"), cup("plate"))
    assert parse("the non-stick pan").root == cup("non-stick pan")


def test_taught_names_are_leaves_anywhere():
    taught = {"my mug"}
    cmd = parse("the cup next to My  Mug", taught)
    anchor = cmd.root.anchor
    assert anchor == NounPhrase(kind="my mug", taught=True, text="my mug")
    assert [p.text for p in cmd.noun_phrases()] == ["the cup", "my mug"]
    alone = parse("my mug", taught)
    assert alone.root.taught and alone.root.text == "my mug" and not alone.is_plain
    assert parse("my mug left of the plate", taught).root.subject.taught
    with pytest.raises(CommandSyntaxError) as info:  # a typo after a taught name is still pointed at
        parse("the cup next to my mug lefft of the plate", taught)
    assert info.value.word == "lefft" and info.value.suggestion == "left of"


def test_noun_phrases_are_deduplicated_in_reading_order():
    cmd = parse("the cup between the plate and the plate")
    assert [p.text for p in cmd.noun_phrases()] == ["the cup", "the plate"]


def test_command_serialises_and_prints():
    cmd = parse("the second red cup from the right next to the bottle", {"my mug"})
    data = json.loads(json.dumps(cmd.to_dict()))
    assert data["kind"] == "single" and data["noun_phrases"] == ["the red cup", "the bottle"]
    assert data["tree"]["type"] == "select" and data["tree"]["of"]["relation"] == "next_to"
    text = cmd.tree_text()
    assert "select 2nd from the right" in text and "anchor: noun phrase 'the bottle'" in text
    assert isinstance(cmd, Command)


def test_is_teach():
    assert is_teach("teach my mug") == "my mug"
    assert is_teach("  Teach   My Mug. ") == "My Mug"
    assert is_teach("the teacher's cup") is None and is_teach("teacher") is None
    with pytest.raises(CommandSyntaxError, match="needs a name"):
        is_teach("teach")


# --- parsing: errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,position,word,suggestion", [
    ("the cup lefft of the plate", 8, "lefft", "left of"),
    ("the cup nxt to the plate", 8, "nxt", "next to"),
    ("the cup rigth of the plate", 8, "rigth", "right of"),
    ("the lefmost cup", 4, "lefmost", "leftmost"),
    ("the second cup from the lft", 24, "lft", "left"),
    ("the cup that is not rde", 20, "rde", "red"),
])
def test_typos_point_at_the_word_and_suggest_the_keyword(text, position, word, suggestion):
    with pytest.raises(CommandSyntaxError) as info:
        parse(text)
    e = info.value
    assert (e.position, e.word, e.suggestion, e.command) == (position, word, suggestion, text)
    assert isinstance(e, InputError) and isinstance(e, ValueError)
    lines = str(e).splitlines()
    assert f"did you mean {suggestion!r}" in lines[0]
    assert lines[1].strip() == text
    assert lines[2] == " " * (4 + position) + "^" * len(word)  # caret under the word, below the indented command


@pytest.mark.parametrize("text,word,fragment", [
    ("", "", "empty command"), ("  ?  ", "", "empty command"),
    ("the cup left of", "left", "needs an object"), ("the cup on top of.", "on", "needs an object"),
    ("the cup between the plate", "between", "between <object> and <object>"),
    ("the sixth cup", "sixth", "first to fifth"), ("the 7th cup", "7th", "first to fifth"),
    ("seven cups", "seven", "from 2 to 6"), ("0 cups", "0", "from 2 to 6"),
    ("the cup next to the bottle left of the book on the table", "on", "at most 2"),
    ("the cup left of all plates", "all", "only start a command"),
    ("the", "", "expected an object"), ("the cup with the handle", "with", "could not place 'with'"),
    ("the cup # plate", "#", "unexpected character"),
    ("the red cup that is not blue", "that", "one colour condition"),
    ("two leftmost cups", "leftmost", "picks a single object"),
])
def test_syntax_errors_name_the_problem(text, word, fragment):
    with pytest.raises(CommandSyntaxError, match=None) as info:
        parse(text)
    assert info.value.word == word
    assert fragment in str(info.value)
    if word:
        assert text[info.value.position:].startswith(word)


def test_depth_error_points_at_the_third_relation():
    with pytest.raises(CommandSyntaxError) as info:
        parse("the cup next to the bottle left of the book on the table")
    assert info.value.position == len("the cup next to the bottle left of the book ")


def test_non_string_command_is_an_input_error():
    with pytest.raises(InputError):
        parse(None)


# --- resolution ---------------------------------------------------------------------------------------------------

def run(text, instances, taught=()):
    cmd = parse(text, taught)
    return resolve(cmd, instances, frame_size=(H, W))


# A plate with one cup far left (listed first: the grounder's best), one just right of it (the nearest overall)
# and one a little left of it (the correct "left of" pick).
PLATE = box(300, 100, 380, 150)
FAR_LEFT, JUST_RIGHT, NEAR_LEFT = box(10, 100, 40, 140, 0.9), box(385, 100, 415, 140, 0.8), box(200, 100, 230, 140)
ROW = {"the cup": [FAR_LEFT, JUST_RIGHT, NEAR_LEFT], "the plate": [PLATE]}


def test_left_of_picks_the_nearest_cup_on_that_side():
    res = run("the cup left of the plate", ROW)
    assert res.found and res.targets == (NEAR_LEFT,) and res.targets[0] is NEAR_LEFT
    assert [(a.text, a.bbox) for a in res.anchors] == [("the plate", PLATE.bbox)]
    assert res.count is None and res.reason is None


def test_right_of():
    assert run("the cup to the right of the plate", ROW).target is JUST_RIGHT


def test_a_cup_standing_on_the_plate_is_neither_left_nor_right_of_it():
    on_plate = box(325, 90, 355, 130)  # center well inside the plate's box, gap 0
    found = {"the cup": [on_plate, FAR_LEFT, JUST_RIGHT, NEAR_LEFT], "the plate": [PLATE]}
    assert run("the cup left of the plate", found).target is NEAR_LEFT
    assert run("the cup right of the plate", found).target is JUST_RIGHT


def test_left_of_with_several_anchors_uses_the_anchor_it_is_left_of():
    p1, p2 = box(100, 100, 150, 150), box(400, 100, 450, 150)
    c1, c2, c3 = box(50, 100, 80, 140), box(370, 100, 395, 140), box(460, 100, 490, 140)
    res = run("the cup left of the plate", {"the cup": [c1, c2, c3], "the plate": [p1, p2]})
    assert res.target is c2 and res.anchors[0].bbox == p2.bbox


def test_above_and_below():
    shelf = box(200, 200, 400, 220)
    high, just_above, below = box(300, 10, 330, 40), box(250, 150, 280, 195), box(250, 300, 280, 340)
    level = box(402, 195, 430, 225)  # beside the shelf, center level with it: neither above nor below
    found = {"the cup": [high, level, below, just_above], "the shelf": [shelf]}
    assert run("the cup above the shelf", found).target is just_above
    assert run("the cup below the shelf", found).target is below
    assert run("the cup beneath the shelf", found).target is below


def test_on_needs_the_bottom_edge_inside_the_anchor_and_horizontal_overlap():
    table = box(100, 200, 500, 400)
    floor_cup, beside_cup, on_cup = box(150, 420, 190, 470), box(600, 160, 630, 230), box(150, 160, 190, 230)
    found = {"the cup": [floor_cup, beside_cup, on_cup], "the table": [table]}
    assert run("the cup on the table", found).target is on_cup
    assert run("the cup on top of the table", found).target is on_cup
    res = run("the cup on the table", {"the cup": [floor_cup, beside_cup], "the table": [table]})
    assert not res.found and res.reason == "no cup is on the table"


def test_in_front_of_and_behind_compare_bottom_edges_of_overlapping_columns():
    crate = box(300, 200, 400, 300)
    # The "aside" cups are nearer the crate and have the right bottom edge but stand beside it, not in its column.
    front, aside_low = box(350, 310, 390, 350), box(405, 250, 440, 320)
    back, aside_high = box(330, 150, 370, 195), box(402, 150, 440, 260)
    found = {"the cup": [aside_low, aside_high, back, front], "the crate": [crate]}
    assert run("the cup in front of the crate", found).target is front
    assert run("the cup behind the crate", found).target is back


def test_next_to_nearest_and_farthest():
    far, touching, close = box(10, 100, 40, 140), box(380, 100, 410, 130), box(250, 100, 290, 130)
    found = {"the cup": [far, close, touching], "the plate": [PLATE]}
    assert run("the cup next to the plate", found).target is touching
    assert run("the cup beside the plate", found).target is touching
    assert run("the cup closest to the plate", found).target is touching
    assert run("the cup farthest from the plate", found).target is far
    near = run("the cups next to the plate", found)  # a set: every cup near the plate, not the far one
    assert near.targets == (touching, close) and near.count == 2


def test_farthest_measures_to_the_nearest_anchor():
    p1, p2 = box(100, 100, 150, 150), box(600, 100, 650, 150)
    c_a, c_b, c_c = box(0, 100, 20, 140), box(330, 100, 350, 140), box(700, 100, 720, 140)
    res = run("the cup furthest from the plate", {"the cup": [c_a, c_b, c_c], "the plate": [p1, p2]})
    assert res.target is c_b


def test_subject_is_never_its_own_anchor():
    purple = box(300, 50, 340, 150)
    same_seen_as_bottle = box(296, 50, 336, 150, 0.95)  # one object, grounded by both phrases (IoU > 0.7)
    other = box(100, 50, 140, 150, 0.5)
    found = {"the bottle": [same_seen_as_bottle, other], "the purple bottle": [purple]}
    assert run("the bottle next to the purple bottle", found).target is other
    assert run("the bottle nearest to the purple bottle", found).target is other
    res = run("the bottle next to the purple bottle", {**found, "the bottle": [same_seen_as_bottle]})
    assert not res.found and res.reason == "no bottle is next to the purple bottle"


def test_between_needs_the_projection_inside_the_segment():
    plate, bowl = box(100, 200, 150, 250), box(500, 200, 550, 250)
    beyond, off_axis, middle = box(600, 210, 630, 240), box(310, 20, 340, 50), box(300, 210, 340, 240)
    found = {"the cup": [beyond, off_axis, middle], "the plate": [plate], "the bowl": [bowl]}
    res = run("the cup between the plate and the bowl", found)
    assert res.target is middle
    assert [a.text for a in res.anchors] == ["the plate", "the bowl"]
    res = run("the cup between the plate and the bowl", {**found, "the cup": [beyond]})
    assert not res.found and "between" in res.reason


def test_missing_anchor_is_not_found_with_a_reason():
    res = run("the cup left of the ball", {"the cup": [NEAR_LEFT], "the ball": []})
    assert not res.found and res.targets == () and "no ball found" in res.reason
    res = run("the cup left of the plate", {"the cup": [JUST_RIGHT], "the plate": [PLATE]})
    assert not res.found and res.reason == "no cup is left of the plate"


def test_nested_relation_uses_the_inner_pick_as_anchor():
    book = box(400, 100, 460, 200)
    # Two bottles left of the book; "the bottle left of the book" is the nearer one, so the cup must be next to
    # it, even though another cup stands closer to the far bottle (and one to a bottle right of the book).
    b_near, b_far, b_right = box(350, 100, 390, 200), box(100, 100, 130, 200), box(500, 100, 530, 200)
    c_by_right, c_by_far, c_by_near = box(531, 100, 560, 200), box(132, 100, 160, 200), box(300, 100, 345, 200)
    found = {"the cup": [c_by_right, c_by_far, c_by_near], "the bottle": [b_right, b_far, b_near],
             "the book": [book]}
    res = run("the cup next to the bottle left of the book", found)
    assert res.target is c_by_near
    assert [(a.text, a.bbox) for a in res.anchors] == [("the bottle", b_near.bbox), ("the book", book.bbox)]
    res = run("the cup next to the bottle left of the book", {**found, "the bottle": [b_right]})
    assert not res.found and "no bottle is left of the book" in res.reason


def test_taught_anchor():
    mug = box(300, 100, 340, 150)
    found = {"the cup": [box(10, 100, 40, 140), box(345, 100, 370, 140)], "my mug": [mug]}
    res = run("the cup next to my mug", found, taught={"my mug"})
    assert res.target.bbox == (345, 100, 370, 140) and res.anchors[0].text == "my mug"
    assert run("my mug", {"my mug": []}, taught={"my mug"}).reason == "'my mug' not found"


# Four cups in a row, listed out of order.
C300, C100, C500, C200 = box(300, 100, 330, 140), box(100, 50, 130, 90), box(500, 150, 530, 190), box(200, 0, 230, 40)
FOUR = {"the cup": [C300, C100, C500, C200]}


@pytest.mark.parametrize("text,expected", [
    ("the leftmost cup", C100), ("the rightmost cup", C500), ("the second cup from the left", C200),
    ("the second cup from the right", C300), ("the 3rd cup", C300), ("the first cup from the right", C500),
    ("the topmost cup", C200), ("the lowest cup", C500), ("the second cup from the top", C100),
])
def test_ordinals_sort_by_center(text, expected):
    assert run(text, FOUR).target is expected


def test_ordinal_beyond_the_instances_is_not_found():
    res = run("the fifth cup from the left", FOUR)
    assert not res.found and "only 4" in res.reason and "5th from the left" in res.reason and res.targets == ()


def test_largest_compares_mask_area_not_box_area():
    big_box_mask = np.zeros((H, W), bool)
    big_box_mask[0:10, 0:10] = True
    small_box_mask = np.zeros((H, W), bool)
    small_box_mask[0:60, 300:360] = True
    big, small = box(0, 0, 200, 200, mask=big_box_mask), box(300, 0, 360, 60, mask=small_box_mask)
    assert (big.area, small.area) == (100, 3600)
    found = {"the box": [big, small]}
    assert run("the largest box", found).target is small
    assert run("the smallest box", found).target is big
    no_masks = {"the box": [box(0, 0, 200, 200), box(300, 0, 360, 60)]}
    assert run("the biggest box", no_masks).target.bbox == (0, 0, 200, 200)


def test_mask_of_the_wrong_size_is_an_input_error():
    inst = box(0, 0, 10, 10, mask=np.ones((10, 10), bool))
    with pytest.raises(InputError, match="frame size"):
        run("the box", {"the box": [inst]})


def test_quantities_resolve():
    assert run("all cups", FOUR).targets == (C300, C100, C500, C200)
    res = run("two cups", FOUR)
    assert not res.found and res.targets == () and res.count == 4 and "exactly 2" in res.reason
    assert "found 4" in res.reason
    res = run("four cups", FOUR)
    assert res.found and len(res.targets) == 4 and res.count == 4
    res = run("how many cups are there", FOUR)
    assert res.found and res.count == 4
    res = run("how many cups", {"the cup": []})
    assert res.found and res.count == 0 and res.targets == ()
    res = run("all cups", {"the cup": []})
    assert not res.found and res.reason == "no cup found"


def test_counting_and_plural_relations_keep_only_matches():
    res = run("how many cups are left of the plate", ROW)
    assert res.count == 2 and set(map(id, res.targets)) == {id(FAR_LEFT), id(NEAR_LEFT)}
    res = run("all cups left of the plate", ROW)
    assert res.targets == (NEAR_LEFT, FAR_LEFT)  # nearest to the anchor first


def test_plural_noun_phrase_returns_every_instance_and_a_count():
    res = run("red cups", {"the red cup": [C100, C200]})
    assert res.found and res.targets == (C100, C200) and res.count == 2


def test_negation_excludes_instances_matching_the_colour():
    red, blue, green = box(100, 100, 140, 150, 0.9), box(200, 100, 240, 150, 0.8), box(300, 100, 340, 150)
    red_again = box(102, 101, 141, 150)  # the same red cup grounded as "the red cup" (IoU >= 0.5)
    found = {"the cup": [red, blue, green], "the red cup": [red_again]}
    assert run("the cup that is not red", found).target is blue
    res = run("non-red cups", found)
    assert res.targets == (blue, green) and res.count == 2
    res = run("the non red cup", {"the cup": [red], "the red cup": [red_again]})
    assert not res.found and res.reason == "every cup found is red"


def test_negation_uses_the_match_mask_when_there_is_one():
    mask = np.zeros((H, W), bool)
    mask[0:200, 0:200] = True  # the red match covers only the left half of its box
    red_match = Instance((0, 0, 400, 200), 1.0, (200.0, 100.0), mask, int(mask.sum()))
    inside, outside = box(90, 90, 110, 110), box(290, 90, 310, 110)
    res = run("the non-red cup", {"the cup": [inside, outside], "the red cup": [red_match]})
    assert res.target is outside


def test_missing_noun_phrase_in_instances_is_an_input_error():
    with pytest.raises(InputError, match="the plate"):
        resolve(parse("the cup left of the plate"), {"the cup": []})


def test_instance_validation_and_resolution_dict():
    with pytest.raises(InputError):
        Instance.from_box((10, 10, 5, 20))
    res = run("the cup left of the plate", ROW)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["found"] and data["targets"][0]["bbox"] == list(NEAR_LEFT.bbox)
    assert data["anchors"] == [{"text": "the plate", "bbox": list(PLATE.bbox)}]


@pytest.mark.parametrize("trailer", ["", " are there", " do you see", " can you see", " are visible", " are in view"])
def test_count_trailers_are_not_part_of_the_object_name(trailer):
    cmd = parse(f"how many blue bottles{trailer}?")
    assert cmd.kind == "count" and [n.text for n in cmd.noun_phrases()] == ["the blue bottle"]
