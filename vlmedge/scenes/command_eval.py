"""Compositional command benchmark on held-out command scenes (:mod:`vlmedge.scenes.layouts`). Torch-free.

``evaluate_commands(ground, teach, forget)`` asks ``ground(frame, command)`` one command per scene, ``scenes`` scenes
per family (seeds ``seed``, ``seed + 1``, ...; the family is part of each scene's seed), and scores what comes back:
an object with ``found`` (bool), ``points`` (the peak of each returned target, (x, y) frame pixels) and ``count``
(int or None). A case is right when (by :attr:`CommandCase.expects`):

* "point" (relation, ordinal, negation, nested, taught, plain): found, and the first returned point lies in the
  visible mask of the answer object (rounded to a pixel, as ``eval-grounding`` scores pointing). ``points`` are
  best first: a singular command means its first target, as the language's ``Resolution.target`` is the first,
  and ``eval-grounding`` scores the best of several regions. So "plain" here is comparable with today's pointing.
  Singular answers that came with more than one point are counted (``FamilyScore.extra_points``) and shown in
  the failure examples, so a grounder that returns every candidate is visible without failing its right picks;
* "points" ("all red cups", "three red cups"): found, and every answer object is pointed at exactly once and
  nothing else is pointed at;
* "count" ("how many red cups"): ``count`` equals the number of matching objects (0 included);
* "none" (unsatisfiable, or "three red cups" when there are two): not found.

Taught cases first call ``teach(name, teach_frame, box)``, then ground, then ``forget(name)`` when given, so no
name carries over to the next case. A grounder that raises an ``InputError`` (for instance a parse error) scores
that case wrong and the error is kept as the failure example; any other exception propagates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vlmedge.errors import ConfigError, InputError, check_choice

from .evaluation import EVAL_SEED_BASE
from .layouts import FAMILIES, CommandCase, make_case

log = logging.getLogger(__name__)

# Goals from the command-language issue (accuracy per family); "quantity" has none there.
GOALS: dict[str, float] = {"plain": 0.97, "relation": 0.90, "ordinal": 0.92, "counting": 0.90, "negation": 0.90,
                           "nested": 0.85, "taught": 0.90, "unsatisfiable": 0.95}

GroundFn = Callable[[np.ndarray, str], Any]  # (frame_bgr, command) -> object with found, points, count
TeachFn = Callable[[str, np.ndarray, tuple[int, int, int, int]], Any]  # (name, frame_bgr, box)
ForgetFn = Callable[[str], Any]  # (name)


@dataclass(frozen=True)
class Failure:
    """One wrong case, enough to reproduce it: ``make_case(family, seed)``."""

    seed: int
    command: str
    form: str
    expected: str  # e.g. "first point in #2 (red cup)", "count 3", "not found"
    got: str  # e.g. "found, 1 point(s): (120, 88) in #1 (red cup)", "not found", "raised CommandSyntaxError: ..."


@dataclass(frozen=True)
class FamilyScore:
    """Accuracy of one family and a few of its failures."""

    family: str
    n: int
    correct: int
    mean_ground_ms: float
    failures: tuple[Failure, ...] = field(default=())  # the first few, in seed order
    goal: float | None = None
    extra_points: int = 0  # singular commands answered with more than one point (scored on the first)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def met(self) -> bool | None:
        """Whether the accuracy reaches the goal; None when the family has no goal."""
        return None if self.goal is None else self.accuracy >= self.goal

    def to_dict(self) -> dict:
        return {"family": self.family, "n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                "goal": self.goal, "met": self.met, "mean_ground_ms": self.mean_ground_ms,
                "extra_points": self.extra_points,
                "failures": [asdict(f) for f in self.failures]}


@dataclass(frozen=True)
class CommandReport:
    """Per-family results of :func:`evaluate_commands`."""

    scenes: int  # per family
    seed: int
    size: tuple[int, int]
    families: tuple[FamilyScore, ...]

    def family(self, name: str) -> FamilyScore:
        by_name = {f.family: f for f in self.families}
        check_choice("family", name, by_name)
        return by_name[name]

    def to_dict(self) -> dict:
        return {"scenes": self.scenes, "seed": self.seed, "size": list(self.size),
                "families": {f.family: f.to_dict() for f in self.families}}

    def summary(self) -> list[str]:
        """One line per family, then one line overall."""
        lines = []
        for f in self.families:
            goal = "" if f.goal is None else f" (goal {100 * f.goal:.0f}%: {'met' if f.met else 'MISSED'})"
            extra = f", {f.extra_points} singular answers with extra points" if f.extra_points else ""
            lines.append(f"{f.family:<14} {100 * f.accuracy:5.1f}% of {f.n}{goal}, {f.mean_ground_ms:.1f} ms/command"
                         + extra)
        missed = [f.family for f in self.families if f.met is False]
        lines.append(f"{len(self.families)} families x {self.scenes} scenes from seed {self.seed}: "
                     + (f"goals missed: {', '.join(missed)}" if missed else "every goal met"))
        return lines

    def table(self) -> str:
        """Markdown table for the README."""
        rows = ["| family | scenes | accuracy | goal |", "|---|---:|---:|---:|"]
        for f in self.families:
            rows.append(f"| {f.family} | {f.n} | {_pct(f)} | {_goal(f.goal)} |")
        return "\n".join(rows)


def comparison_table(reports: Mapping[str, CommandReport]) -> str:
    """Markdown table with one accuracy column per report, e.g. ``{"fp32": r32, "int8": r8}``."""
    if not reports:
        raise ConfigError("comparison_table needs at least one report, e.g. {'fp32': report}")
    names = list(reports)
    families = list(dict.fromkeys(f.family for r in reports.values() for f in r.families))
    rows = ["| family | scenes | goal | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    for fam in families:
        scores = [next((f for f in reports[k].families if f.family == fam), None) for k in names]
        n = max(s.n for s in scores if s is not None)
        cells = [_pct(s) if s is not None else "-" for s in scores]
        rows.append(f"| {fam} | {n} | {_goal(GOALS.get(fam))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _pct(f: FamilyScore) -> str:
    return f"{100 * f.accuracy:.1f}%" + (" (below goal)" if f.met is False else "")


def _goal(goal: float | None) -> str:
    return "-" if goal is None else f"{100 * goal:.0f}%"


def write_json(report: CommandReport, path, bundle: str | None = None) -> None:
    with open(path, "w") as f:
        json.dump({"bundle": bundle, **report.to_dict()}, f, indent=2)


# ----------------------------------------------------------------------------- scoring
def _points(got: Any) -> list[tuple[float, float]]:
    return [(float(p[0]), float(p[1])) for p in (got.points or ())]


def _hit(case: CommandCase, point: tuple[float, float]) -> int | None:
    """The object whose visible mask holds the point (masks do not overlap), or None."""
    x, y = int(round(point[0])), int(round(point[1]))
    for i, o in enumerate(case.objects):
        h, w = o.mask.shape
        if 0 <= x < w and 0 <= y < h and o.mask[y, x]:
            return i
    return None


def score(case: CommandCase, got: Any) -> bool:
    """Whether ``got`` (found, points, count) answers ``case`` (see the module docstring)."""
    expects = case.expects
    if expects == "count":
        return got.count is not None and int(got.count) == case.count
    if expects == "none":
        return not got.found
    if not got.found:
        return False
    hits = [_hit(case, p) for p in _points(got)]
    if expects == "point":
        return bool(hits) and hits[0] == case.answer[0]
    return None not in hits and sorted(hits) == sorted(case.answer)


def _name(case: CommandCase, i: int | None) -> str:
    if i is None:
        return "background"
    o = case.objects[i]
    return f"#{i} ({o.color} {o.kind})"


def expected_text(case: CommandCase) -> str:
    expects = case.expects
    if expects == "count":
        return f"count {case.count}"
    if expects == "none":
        return "not found"
    names = ", ".join(_name(case, i) for i in case.answer)
    return f"first point in {names}" if expects == "point" else f"one point in each of {names}"


def got_text(case: CommandCase, got: Any) -> str:
    if case.expects == "count":
        return f"count {got.count}"
    if not got.found:
        return "not found"
    pts = _points(got)
    shown = ", ".join(f"({x:.0f}, {y:.0f}) in {_name(case, _hit(case, (x, y)))}" for x, y in pts[:6])
    return f"found, {len(pts)} point(s): {shown}" + (" ..." if len(pts) > 6 else "")


# ----------------------------------------------------------------------------- the benchmark
def _check_families(families: Sequence[str] | None, teach: TeachFn | None) -> tuple[str, ...]:
    if families is None:
        return tuple(f for f in FAMILIES if f != "taught" or teach is not None)
    if isinstance(families, str):
        raise ConfigError(f"families must be a sequence of names such as ('relation',), got the string {families!r}")
    families = tuple(families)
    for f in families:
        check_choice("family", f, FAMILIES)
    if len(set(families)) != len(families):
        raise ConfigError(f"families lists a family twice: {families}")
    if not families:
        raise ConfigError(f"families is empty; choose from {', '.join(FAMILIES)}")
    if "taught" in families and teach is None:
        raise ConfigError("the taught family needs teach(name, frame, box); pass teach= or leave 'taught' out")
    return families


def evaluate_commands(ground: GroundFn, teach: TeachFn | None = None, forget: ForgetFn | None = None,
                      families: Sequence[str] | None = None, scenes: int = 500, seed: int = EVAL_SEED_BASE,
                      size: tuple[int, int] = (480, 640), progress: bool = False,
                      max_failures: int = 5) -> CommandReport:
    """Score ``ground(frame, command)`` on ``scenes`` held-out scenes per family.

    ``families``: default every family, without "taught" when no ``teach`` is given. ``max_failures``: failure
    examples kept per family.
    """
    if not callable(ground):
        raise ConfigError(f"ground must be callable as ground(frame, command), got {type(ground).__name__}")
    if not isinstance(scenes, int) or scenes <= 0:
        raise ConfigError(f"scenes must be a positive int, got {scenes!r}")
    if not isinstance(max_failures, int) or max_failures < 0:
        raise ConfigError(f"max_failures must be an int >= 0, got {max_failures!r}")
    for name, fn in (("teach", teach), ("forget", forget)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be callable or None, got {type(fn).__name__}")
    families = _check_families(families, teach)
    t0 = time.time()
    out = [_evaluate_family(fam, ground, teach, forget, scenes, int(seed), size, max_failures, progress)
           for fam in families]
    report = CommandReport(scenes, int(seed), (int(size[0]), int(size[1])), tuple(out))
    if progress:
        for line in report.summary():
            log.info("eval-commands: %s", line)
        log.info("eval-commands: done in %.0f s", time.time() - t0)
    return report


def _evaluate_family(family: str, ground: GroundFn, teach: TeachFn | None, forget: ForgetFn | None, scenes: int,
                     seed: int, size: tuple[int, int], max_failures: int, progress: bool) -> FamilyScore:
    correct = extra = 0
    failures: list[Failure] = []
    t_ground = 0.0
    t0 = time.time()
    for i in range(scenes):
        case = make_case(family, seed + i, size)
        if case.teach is not None:
            teach(case.teach.name, case.teach.frame, case.teach.box)
        try:
            t = time.perf_counter()
            try:
                got = ground(case.frame, case.command)
                error = None
            except InputError as e:  # a command the grounder cannot read is a wrong answer, not a crash
                got, error = None, f"raised {type(e).__name__}: {str(e).splitlines()[0]}"
            t_ground += time.perf_counter() - t
        finally:
            if case.teach is not None and forget is not None:
                forget(case.teach.name)
        ok = error is None and score(case, got)
        extra += error is None and case.expects == "point" and got.found and len(_points(got)) > 1
        correct += ok
        if not ok and len(failures) < max_failures:
            failures.append(Failure(case.seed, case.command, case.form, expected_text(case),
                                    error or got_text(case, got)))
        if progress and (i + 1) % 50 == 0:
            log.info("eval-commands %s: %d/%d scenes, %.1f%% right (%.0f s)", family, i + 1, scenes,
                     100 * correct / (i + 1), time.time() - t0)
    return FamilyScore(family, scenes, correct, 1000 * t_ground / scenes, tuple(failures), GOALS.get(family), extra)
