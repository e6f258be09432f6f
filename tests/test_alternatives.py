"""benchmarks/alternatives.py's verdict: the default path against the other int8 paths, and what it says when a
run holds nothing to compare (a run of extra variants only, or a variant that failed)."""

from __future__ import annotations

import pytest
from _scripts import load_script


@pytest.fixture(scope="module")
def alt():
    return load_script("benchmarks/alternatives.py")


def test_the_default_is_the_faster_of_its_two_backends_against_the_fastest_alternative(alt):
    res = {"ort-int8": {"median_ms": 47.0}, "openvino-bundle": {"median_ms": 38.0},
           "openvino-nncf": {"median_ms": 37.0}, "torch-pt2e": {"median_ms": 47.5},
           "ort-int8-spin": {"median_ms": 39.0}}
    v = alt.verdict(res)
    assert (v["default"], v["best_alternative"], v["default_is_fastest"]) == ("openvino-bundle", "openvino-nncf", False)
    assert v["alternative_over_default"] == round(37.0 / 38.0, 3) and v["spinning_on_over_default"] == round(39 / 38, 3)


def test_a_run_without_alternatives_says_which_side_is_missing(alt):
    res = {"ort-int8": {"median_ms": 54.7}, "openvino-bundle-bf16": {"median_ms": 39.6}}
    note = alt.verdict(res)["note"]
    assert "no alternative timed (any of openvino-nncf, torch-pt2e)" in note
    assert "default-path" not in note and "not timed" not in note
    note = alt.verdict({"openvino-nncf": {"median_ms": 38.0}, "ort-int8": {"error": "boom"}})["note"]
    assert "no default-path variant timed (any of ort-int8, openvino-bundle)" in note
    assert note.endswith("asked for but not timed: ort-int8")
