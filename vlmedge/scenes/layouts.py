"""Command scenes: tabletop layouts where a compositional command needs its relation, ordinal, count, negation or
taught name to pick the right object, with the ground truth computed from the drawn boxes and masks. Torch-free.

:func:`make_case` ``(family, seed)`` -> :class:`CommandCase` (frame, objects with masks, command text, answer).
Frames are drawn like :func:`~vlmedge.scenes.render.render_scene` (same tables, light, shadows, sensor noise,
object sizes), but the objects are placed on purpose. Families (:data:`FAMILIES`):

* ``plain``: "the red cup" in a :func:`render_scene` scene (seed = the case seed, so the scenes are the
  ``eval-grounding`` ones): the baseline the other families are compared with.
* ``relation``: two or three instances of the subject (same colour and kind), one anchor: "the red cup left of the
  plate" where only one red cup is left of it. Every relation of the command language appears.
* ``ordinal``: "the leftmost / rightmost / topmost / lowest X", "the X on the left", "the second X from the right"
  (first..fifth), "the largest / smallest X" among 2..5 instances, often in a row.
* ``counting``: "how many red cups (are there)?" with 0..6 of them among near-miss distractors.
* ``quantity``: "all red cups", "every red cup", "three red cups" (found only when exactly that many exist).
* ``negation``: "the cup that is not red", "the non-red cup": one cup of another colour among red ones.
* ``nested``: depth 2, "the cup next to the bottle left of the book": two bottles (one left of the book), two cups
  (one next to each bottle); resolving the inner relation wrongly gives the other cup ("next to") or not the
  right one ("left of": a half-plane may then hold both cups).
* ``taught``: a name ("dax") taught from the object's box in another frame; found among same-kind objects of other
  colours.
* ``unsatisfiable``: a missing anchor or subject (a near miss is present), a relation no instance satisfies, an
  ordinal beyond the count, a negation that leaves nothing, an absent object: the answer is "not found".

Geometry (image plane; boxes ``(x0, y0, x1, y1)`` are the tight boxes of the VISIBLE masks, x1/y1 exclusive, x to the
right, y down; the centre is the box centre; w, h are the ANCHOR's width and height). A relation is three-valued:
a layout is kept only when every candidate is clearly in or clearly out, so the answer does not hinge on a
tolerance that a resolver may set differently.

* left of: holds when the subject centre is left of the anchor's left edge by ``EDGE_MARGIN`` w or more
  (cx <= x0 - EDGE_MARGIN w); clearly fails when it is right of the anchor's middle (cx > x0 + w/2). Right of,
  above (against y0 and h), below / under (against y1) likewise.
* on / on top of: the subject's bottom edge lies inside the anchor's vertical extent, at least ``ON_INSIDE`` h from
  both edges, and ``ON_OVERLAP`` of the subject's width lies over the anchor. Fails clearly when the boxes are
  ``ON_FAR`` of the anchor's larger side apart, the bottom is ``ON_FAR`` h outside the extent or under
  ``ON_FAR`` of the width overlaps. Stacked objects are drawn over what they stand on.
* in front of (behind): the subject's bottom edge is ``DEPTH_STEP`` h lower (higher) than the anchor's and their
  widths overlap by ``DEPTH_OVERLAP`` of the narrower; fails clearly when the bottom is ``DEPTH_LEVEL`` h on the
  other side or the boxes are ``SIDE_GAP`` w apart sideways.
* next to / beside / near / nearest / closest to: the subject nearest the anchor by box gap AND by centre distance,
  every other subject at least ``DISTANCE_MARGIN`` of the anchor's larger side (and ``DISTANCE_MIN_PX``) further by
  both. Farthest from: the mirror image.
* between Y and Z: the subject centre projects onto the segment joining the anchors' centres at t in
  ``BETWEEN_INSIDE`` and lies within ``BETWEEN_LATERAL`` of its length from it; fails clearly at t outside
  [-``BETWEEN_OUTSIDE``, 1 + ``BETWEEN_OUTSIDE``] or ``BETWEEN_FAR`` of its length away.
* ordinals and positional superlatives order the instances by centre x (from the left / right) or centre y
  (top / lowest); neighbours of the chosen one differ by ``ORDER_MARGIN`` of the median instance width (height), and
  ordering by mask centroid picks the same one. Largest / smallest compare visible mask pixels: the chosen one
  differs from every other by a factor ``SIZE_RATIO``.
* a plain noun phrase used as an anchor must match exactly one object; a relation or ordinal that names one object
  must resolve to exactly one.

Every layout keeps at least ``MIN_VISIBLE`` of each object's pixels visible and ``MIN_AREA`` pixels, and keeps
``SEPARATION_PX`` between objects of the same kind (counting and quantity: half of it between any two objects, and
no overlap), so instances stay separable in a patch map. Layouts that break a rule are re-drawn from the same
seeded generator, so a case is deterministic.

Seeds: case ``seed`` of a family draws from ``numpy.random.default_rng([seed, FAMILY_TAG])``: the family is part of
the seed, so families never share a scene, and no stream equals a ``render_scene(seed)`` one (the demo model trains
on ``render_scene`` seeds below ``EVAL_SEED_BASE``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from vlmedge.errors import ConfigError, InputError, check_choice

from . import render as R
from .evaluation import EVAL_SEED_BASE, MIN_AREA
from .render import COLOR_NAMES, KINDS, SceneObject

FAMILIES: tuple[str, ...] = ("plain", "relation", "ordinal", "counting", "quantity", "negation", "nested", "taught",
                             "unsatisfiable")
_FAMILY_TAG = {f: 7700 + i for i, f in enumerate(FAMILIES)}  # second seed word: one stream per family

Box = tuple[int, int, int, int]

# Margins; lengths in pixels are at 480 rows and scale with the frame.
MIN_VISIBLE = 0.6  # share of an object's own pixels left visible; less and it is too hidden to ask about
SEPARATION_PX = 40  # box gap between objects of one kind: a patch of the demo model, so instances stay apart
OVERLAP_MAX = 0.15  # other objects' boxes may overlap by this share of the smaller box (masks are checked after)
EDGE_MARGIN = 0.1  # a resolver may let a centre a little inside the edge count; ours stays this far outside
ON_INSIDE, ON_OVERLAP, ON_FAR = 0.1, 0.7, 0.25
DEPTH_STEP, DEPTH_LEVEL, DEPTH_OVERLAP, SIDE_GAP = 0.15, 0.1, 0.3, 0.2
DISTANCE_MARGIN, DISTANCE_MIN_PX = 0.3, 30
BETWEEN_INSIDE, BETWEEN_LATERAL, BETWEEN_OUTSIDE, BETWEEN_FAR = (0.2, 0.8), 0.3, 0.1, 0.8
ORDER_MARGIN = 0.35
SIZE_RATIO = 1.4

_DIRECTIONAL = ("left_of", "right_of", "above", "below", "on", "in_front_of", "behind")
_BY_DISTANCE = ("next_to", "nearest", "farthest")
RELATIONS: tuple[str, ...] = _DIRECTIONAL + _BY_DISTANCE + ("between",)

# How each relation is said; the language accepts all of them (vlmedge.language.vocabulary).
_RELATION_PHRASES = {
    "left_of": ("left of", "to the left of", "on the left of"),
    "right_of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "underneath", "beneath"),
    "on": ("on", "on top of"),
    "in_front_of": ("in front of",),
    "behind": ("behind",),
    "next_to": ("next to", "beside", "near"),
    "nearest": ("nearest to", "closest to", "nearest", "closest"),
    "farthest": ("farthest from", "furthest from"),
}
_ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth")
_ORDINAL_DIGITS = ("1st", "2nd", "3rd", "4th", "5th")
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_COUNT_TRAILERS = ("", "", " are there", " do you see", " can you see", " are visible")
_TAUGHT_NAMES = ("dax", "blicket", "wug", "zorp", "toma", "my thing", "fep", "kiki", "gizmo", "grandma's gift")
# What can stand on what (a cup on a book or a plate), and what is small enough to stand there.
_SUPPORTS = ("book", "plate", "box")
_STANDERS = ("cup", "can", "ball", "bottle")

_PLACE_TRIES = 300  # random positions tried per object
_LAYOUT_TRIES = 12  # placements tried per choice of objects
_DRAFTS = 60  # choices of objects tried per case before giving up


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Teaching:
    """How a taught object is shown before the command: its name and its box in another frame."""

    name: str
    frame: np.ndarray = field(repr=False)  # BGR uint8 [H, W, 3], another scene than the case's
    box: Box  # (x0, y0, x1, y1) frame pixels, x1/y1 exclusive: the tight box of the object there
    kind: str
    color: str


@dataclass(frozen=True)
class CommandCase:
    """One command on one frame with its ground truth."""

    family: str
    seed: int
    command: str  # the text as a user would type it (phrasing, articles and case vary)
    frame: np.ndarray = field(repr=False)  # BGR uint8 [H, W, 3]
    objects: tuple[SceneObject, ...] = field(repr=False)  # back to front, visible masks
    answer: tuple[int, ...]  # indices into objects the command designates; empty: nothing qualifies
    form: str  # the variant within the family ("left_of", "second_from_right", "missing_anchor", ...)
    anchors: tuple[int, ...] = ()  # objects the answer was related to (nested: inner anchor first)
    plural: bool = False  # the command asks for a set ("all red cups", "three red cups")
    count: int | None = None  # counting commands: how many objects match
    teach: Teaching | None = None  # taught family: show this before the command

    def __post_init__(self):
        check_choice("CommandCase.family", self.family, FAMILIES)
        for name in ("answer", "anchors"):
            bad = [i for i in getattr(self, name) if not 0 <= i < len(self.objects)]
            if bad:
                raise InputError(f"CommandCase.{name} indices {bad} are outside 0..{len(self.objects) - 1}")
        if self.family == "taught" and self.teach is None:
            raise InputError("CommandCase.teach is required for the taught family")

    @property
    def expects(self) -> str:
        """How an answer is scored: "count", "none" (not found), "points" (every answer object once) or "point"."""
        if self.count is not None:
            return "count"
        if not self.answer:
            return "none"
        return "points" if self.plural else "point"


def make_case(family: str, seed: int, size: tuple[int, int] = (480, 640)) -> CommandCase:
    """The command case of ``family`` for ``seed`` (deterministic). Held-out seeds are >= EVAL_SEED_BASE."""
    check_choice("family", family, FAMILIES)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    size = R._check_size(size)
    rng = np.random.default_rng([int(seed), _FAMILY_TAG[family]])
    if family == "plain":
        return _plain_case(rng, int(seed), size)
    if family == "taught":
        return _taught_case(rng, int(seed), size)
    make, choices = _GENERATORS[family]
    # The variant is drawn once, before any layout is tried: re-drawing it with the layout would favour the
    # variants that are easy to lay out.
    choice = _pick(rng, choices)
    stage = R.draw_stage(rng, size, scale_jitter=_SCALE_JITTER.get(family, (0.9, 1.2)))
    unit = size[0] / 480
    for _ in range(_DRAFTS):
        draft = make(rng, stage, unit, choice)
        if draft is not None:
            return _finish(rng, family, int(seed), stage, draft)
    raise ConfigError(f"could not lay out a {family!r} scene for seed {seed} at size {size}; frames smaller than "
                      "about 240x320 leave too little room")


def iter_cases(family: str, scenes: int, seed: int = EVAL_SEED_BASE,
               size: tuple[int, int] = (480, 640)) -> Iterator[CommandCase]:
    """``scenes`` cases of ``family``, seeds ``seed``, ``seed + 1``, ..."""
    if not isinstance(scenes, int) or scenes <= 0:
        raise ConfigError(f"scenes must be a positive int, got {scenes!r}")
    for i in range(scenes):
        yield make_case(family, int(seed) + i, size)


# ----------------------------------------------------------------------------- geometry (ground truth)
def _centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _w(b: Box) -> int:
    return b[2] - b[0]


def _h(b: Box) -> int:
    return b[3] - b[1]


def _gap(a: Box, b: Box) -> float:
    dx = max(0, b[0] - a[2], a[0] - b[2])
    dy = max(0, b[1] - a[3], a[1] - b[3])
    return math.hypot(dx, dy)


def _x_overlap(a: Box, b: Box) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0]))


def _side_gap(a: Box, b: Box) -> int:
    return max(0, b[0] - a[2], a[0] - b[2])


def _inter(a: Box, b: Box) -> int:
    return _x_overlap(a, b) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _clear(flag_in: bool, flag_out: bool) -> bool | None:
    """True / False when clearly in / out, None in between (too close to call)."""
    return True if flag_in else False if flag_out else None


def directional(relation: str, s: Box, a: Box) -> bool | None:
    """Whether subject box ``s`` stands in ``relation`` to anchor box ``a``: True, False, or None when too close
    to call (see the module docstring for the definitions and margins)."""
    cx, cy = _centre(s)
    w, h = _w(a), _h(a)
    if relation == "left_of":
        return _clear(cx <= a[0] - EDGE_MARGIN * w, cx > a[0] + w / 2)
    if relation == "right_of":
        return _clear(cx >= a[2] + EDGE_MARGIN * w, cx < a[2] - w / 2)
    if relation == "above":
        return _clear(cy <= a[1] - EDGE_MARGIN * h, cy > a[1] + h / 2)
    if relation == "below":
        return _clear(cy >= a[3] + EDGE_MARGIN * h, cy < a[3] - h / 2)
    if relation == "on":
        inside = a[1] + ON_INSIDE * h <= s[3] <= a[3] - ON_INSIDE * h
        over = _x_overlap(s, a) >= ON_OVERLAP * _w(s)
        apart = (_gap(s, a) >= ON_FAR * max(w, h) or s[3] >= a[3] + ON_FAR * h or s[3] <= a[1] - ON_FAR * h
                 or _x_overlap(s, a) <= ON_FAR * _w(s))
        return _clear(inside and over, apart)
    if relation in ("in_front_of", "behind"):
        step = (s[3] - a[3]) / h if relation == "in_front_of" else (a[3] - s[3]) / h
        overlap = _x_overlap(s, a) >= DEPTH_OVERLAP * min(_w(s), w)
        return _clear(step >= DEPTH_STEP and overlap, step <= -DEPTH_LEVEL or _side_gap(s, a) >= SIDE_GAP * w)
    raise ConfigError(f"unknown directional relation {relation!r}; expected one of {_DIRECTIONAL}")


def between(s: Box, p: Box, q: Box) -> bool | None:
    """Whether box ``s`` is between boxes ``p`` and ``q`` (True / False / None: too close to call)."""
    (sx, sy), (px, py), (qx, qy) = _centre(s), _centre(p), _centre(q)
    vx, vy = qx - px, qy - py
    length = math.hypot(vx, vy)
    if length == 0:
        return None
    t = ((sx - px) * vx + (sy - py) * vy) / length ** 2
    lateral = abs((sx - px) * vy - (sy - py) * vx) / length
    inside = BETWEEN_INSIDE[0] <= t <= BETWEEN_INSIDE[1] and lateral <= BETWEEN_LATERAL * length
    out = t <= -BETWEEN_OUTSIDE or t >= 1 + BETWEEN_OUTSIDE or lateral >= BETWEEN_FAR * length
    return _clear(inside, out)


def _distances(s: Box, a: Box) -> tuple[float, float]:
    (sx, sy), (ax, ay) = _centre(s), _centre(a)
    return _gap(s, a), math.hypot(sx - ax, sy - ay)


def by_distance(relation: str, subjects: Sequence[Box], anchor: Box, unit: float = 1.0) -> int | None:
    """Index into ``subjects`` of the one nearest ("next_to", "nearest") or farthest ("farthest") from ``anchor``,
    or None when the runner-up is within the margin by box gap or by centre distance."""
    if not subjects:
        return None
    d = [_distances(s, anchor) for s in subjects]
    sign = -1.0 if relation == "farthest" else 1.0
    best = min(range(len(d)), key=lambda i: sign * d[i][0] + 1e-6 * sign * d[i][1])
    margin = max(DISTANCE_MARGIN * max(_w(anchor), _h(anchor)), DISTANCE_MIN_PX * unit)
    for i, (g, c) in enumerate(d):
        if i != best and (sign * (g - d[best][0]) < margin or sign * (c - d[best][1]) < margin):
            return None
    return best


# ----------------------------------------------------------------------------- what a command means
@dataclass(frozen=True)
class _Phrase:
    """Objects of ``kind`` (and ``color``; or any colour but ``not_color``); ``name``: said as a taught name."""

    kind: str
    color: str | None = None
    not_color: str | None = None
    name: str | None = None

    def matches(self, o: SceneObject) -> bool:
        return (o.kind == self.kind and (self.color is None or o.color == self.color)
                and o.color != self.not_color)


@dataclass(frozen=True)
class _Relation:
    relation: str
    subject: _Phrase
    anchor: Node
    anchor2: _Phrase | None = None  # between only


@dataclass(frozen=True)
class _Select:
    how: str  # left, right, top, bottom, largest, smallest
    index: int  # 1-based
    of: _Phrase


Node = Union[_Phrase, _Relation, _Select]


def _resolve(node: Node, objects: Sequence[SceneObject], unit: float) -> tuple[int, ...] | None:
    """Indices the node designates (a plain phrase: all its matches; a relation or ordinal: exactly one, or none
    when nothing qualifies), or None when the layout leaves it ambiguous."""
    if isinstance(node, _Phrase):
        return tuple(i for i, o in enumerate(objects) if node.matches(o))
    if isinstance(node, _Select):
        return _select(node, objects)
    subjects = _resolve(node.subject, objects, unit)
    anchors = _resolve(node.anchor, objects, unit)
    if anchors is None or len(anchors) > 1:
        return None  # "left of the plate" with two plates: not a layout we ask about
    second = None
    if node.anchor2 is not None:
        anchors2 = _resolve(node.anchor2, objects, unit)
        if anchors2 is None or len(anchors2) > 1:
            return None
        if not anchors2:
            return ()
        second = anchors2[0]
    if not subjects or not anchors:
        return ()
    return relate(node.relation, subjects, anchors[0], objects, unit, second)


def relate(relation: str, subjects: Sequence[int], anchor: int, objects: Sequence[SceneObject], unit: float = 1.0,
           anchor2: int | None = None) -> tuple[int, ...] | None:
    """The one subject (indices into ``objects``) in ``relation`` to ``anchor``, () when none is, None when that is
    too close to call or more than one is."""
    subjects = [i for i in subjects if i != anchor and i != anchor2]
    boxes = [objects[i].bbox for i in subjects]
    a = objects[anchor].bbox
    if relation in _BY_DISTANCE:
        best = by_distance(relation, boxes, a, unit)
        return None if best is None else (subjects[best],)
    if relation == "between":
        verdicts = [between(b, a, objects[anchor2].bbox) for b in boxes]
    else:
        verdicts = [directional(relation, b, a) for b in boxes]
    if any(v is None for v in verdicts):
        return None
    hits = tuple(i for i, v in zip(subjects, verdicts) if v)
    return hits if len(hits) <= 1 else None


def _select(node: _Select, objects: Sequence[SceneObject]) -> tuple[int, ...] | None:
    members = [i for i, o in enumerate(objects) if node.of.matches(o)]
    if len(members) < node.index:
        return ()
    if node.how in ("largest", "smallest"):
        area = sorted(((objects[i].area, i) for i in members), reverse=node.how == "largest")
        if len(area) > 1:
            big, small = max(area[0][0], area[1][0]), min(area[0][0], area[1][0])
            if big < SIZE_RATIO * small:
                return None
        return (area[0][1],)
    axis = 0 if node.how in ("left", "right") else 1
    sign = -1.0 if node.how in ("right", "bottom") else 1.0
    centres = {i: _centre(objects[i].bbox)[axis] for i in members}
    order = sorted(members, key=lambda i: sign * centres[i])
    k = node.index - 1
    extent = float(np.median([(_w if axis == 0 else _h)(objects[i].bbox) for i in members]))
    for j in (k - 1, k + 1):
        if 0 <= j < len(order) and abs(centres[order[j]] - centres[order[k]]) < ORDER_MARGIN * extent:
            return None
    centroid = {i: float(np.nonzero(objects[i].mask)[1 - axis].mean()) for i in members}
    if sorted(members, key=lambda i: sign * centroid[i])[k] != order[k]:
        return None
    return (order[k],)


# ----------------------------------------------------------------------------- how a command is said
def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("x", "s", "ch", "sh")) else "s")


def _det(rng: np.random.Generator, lead: bool = False) -> str:
    """An article: mostly "the"; sometimes none, or "a" for a command's first object."""
    r = rng.random()
    if r < 0.8:
        return "the "
    return "a " if lead and r < 0.88 else ""


def _say(rng: np.random.Generator, p: _Phrase, lead: bool = False) -> str:
    if p.name is not None:
        return p.name
    if p.not_color is not None:
        det = "the " if rng.random() < 0.85 else ""
        if rng.random() < 0.35:
            return f"{det}non-{p.not_color} {p.kind}"
        return f"{det}{p.kind} {_pick(rng, ('that is', 'which is'))} not {p.not_color}"
    return _det(rng, lead) + (f"{p.color} {p.kind}" if p.color else p.kind)


def _say_relation(rng: np.random.Generator, node: _Relation, lead: bool = True) -> str:
    subject = _say(rng, node.subject, lead)
    joint = _pick(rng, (" ", " ", " ", " ", " that is ", " which is "))
    if node.relation == "between":
        return f"{subject}{joint}between {_say_node(rng, node.anchor)} and {_say(rng, node.anchor2)}"
    return f"{subject}{joint}{_pick(rng, _RELATION_PHRASES[node.relation])} {_say_node(rng, node.anchor)}"


def _say_node(rng: np.random.Generator, node: Node, lead: bool = False) -> str:
    if isinstance(node, _Phrase):
        return _say(rng, node, lead)
    if isinstance(node, _Relation):
        return _say_relation(rng, node, lead)
    return _say_select(rng, node)


def _say_select(rng: np.random.Generator, node: _Select) -> str:
    bare = f"{node.of.color} {node.of.kind}" if node.of.color else node.of.kind
    det = "the " if rng.random() < 0.9 else ""
    if node.how in ("largest", "smallest"):
        word = _pick(rng, ("largest", "biggest")) if node.how == "largest" else "smallest"
        return f"{det}{word} {bare}"
    if node.index == 1 and rng.random() < 0.7:
        forms = {"left": ("leftmost {}", "{} on the left", "{} on the far left"),
                 "right": ("rightmost {}", "{} on the right", "{} on the far right"),
                 "top": ("topmost {}", "highest {}", "{} at the top"),
                 "bottom": ("lowest {}", "bottommost {}", "{} at the bottom")}[node.how]
        return det + _pick(rng, forms).format(bare)
    words = _ORDINAL_DIGITS if rng.random() < 0.15 else _ORDINAL_WORDS
    return f"the {words[node.index - 1]} {bare} from the {node.how}"


def _style(rng: np.random.Generator, text: str, question: bool = False) -> str:
    """Vary case and end punctuation the way people type."""
    r = rng.random()
    if r < 0.2:
        text = text[:1].upper() + text[1:]
    elif r < 0.26:
        text = text.upper()
    r = rng.random()
    if question and r < 0.5:
        text += "?"
    elif not question and r < 0.1:
        text += "."
    return text


# ----------------------------------------------------------------------------- placing objects
@dataclass(frozen=True)
class _Item:
    kind: str
    color: str
    sprite: R.Sprite
    off: Box  # the hard mask's box inside the sprite

    @property
    def dims(self) -> tuple[int, int]:
        return self.off[2] - self.off[0], self.off[3] - self.off[1]


def _item(rng: np.random.Generator, stage: R.Stage, kind: str, color: str, span: tuple[float, float] = (0.0, 1.0),
          tilt: float = 1.0) -> _Item:
    """A sprite whose size lies in ``span`` of the kind's usual range (0 = smallest, 1 = largest)."""
    lo, hi = R.size_range(kind)
    size = (lo + (hi - lo) * rng.uniform(*span)) * stage.scale
    sp = R.sized_sprite(rng, kind, color, size, stage.light_dir, tilt)
    return _Item(kind, color, sp, R.sprite_box(sp))


class _Layout:
    """Objects being placed on a stage (positions and boxes; nothing is drawn until the layout is accepted)."""

    def __init__(self, rng: np.random.Generator, stage: R.Stage, unit: float, spacing: float = 0.0):
        self.rng, self.stage, self.unit = rng, stage, unit
        self.spacing = spacing * unit  # minimum box gap between any two objects (counting keeps all apart)
        self.items: list[_Item] = []
        self.xy: list[tuple[int, int]] = []
        self.boxes: list[Box] = []
        self.on: dict[int, int] = {}  # stacked item -> the item it stands on

    def _fits(self, box: Box, item: _Item, overlap: Sequence[int]) -> bool:
        for j, (b, other) in enumerate(zip(self.boxes, self.items)):
            if j in overlap:
                continue
            if other.kind == item.kind or self.spacing:
                if _gap(box, b) < max(SEPARATION_PX * self.unit if other.kind == item.kind else 0, self.spacing):
                    return False
            elif _inter(box, b) > OVERLAP_MAX * min(_w(box) * _h(box), _w(b) * _h(b)):
                return False
        return True

    def add(self, item: _Item, ok: Callable[[Box], bool | None] | None = None, overlap: Sequence[int] = (),
            on: int | None = None, near: Box | None = None) -> int | None:
        """Put ``item`` at a random free spot where ``ok(box)`` is True (``near``: only around that box); may
        overlap the items in ``overlap``; ``on``: it stands on that item (drawn over it). Its index, or None."""
        H, W = self.stage.size
        sh, sw = item.sprite.alpha.shape
        ox0, oy0, ox1, oy1 = item.off
        x_lo, x_hi, y_lo, y_hi = 0, W - sw, self.stage.top, H - sh
        if near is not None:
            x_lo, x_hi = max(x_lo, near[0] - ox1), min(x_hi, near[2] - ox0)
            y_lo, y_hi = max(y_lo, near[1] - oy1), min(y_hi, near[3] - oy0)
        if x_hi < x_lo or y_hi < y_lo:
            return None
        for _ in range(_PLACE_TRIES):
            x, y = int(self.rng.integers(x_lo, x_hi + 1)), int(self.rng.integers(y_lo, y_hi + 1))
            box = (x + ox0, y + oy0, x + ox1, y + oy1)
            if (ok is None or ok(box)) and self._fits(box, item, overlap):
                return self._put(item, x, y, box, on)
        return None

    def add_at(self, item: _Item, box_x0: int, box_y1: int) -> int | None:
        """Put ``item`` with its box's left edge at ``box_x0`` and bottom at ``box_y1`` (rows); None if it does
        not fit there."""
        H, W = self.stage.size
        sh, sw = item.sprite.alpha.shape
        x, y = box_x0 - item.off[0], box_y1 - item.off[3]
        if not (0 <= x <= W - sw and self.stage.top <= y <= H - sh):
            return None
        box = (x + item.off[0], y + item.off[1], x + item.off[2], y + item.off[3])
        return self._put(item, x, y, box, None) if self._fits(box, item, ()) else None

    def _put(self, item: _Item, x: int, y: int, box: Box, on: int | None) -> int:
        self.items.append(item)
        self.xy.append((x, y))
        self.boxes.append(box)
        if on is not None:
            self.on[len(self.items) - 1] = on
        return len(self.items) - 1

    def settle(self) -> _Settled | None:
        """Draw order (lower on the table = nearer = later; a stacked object right after its support) and the
        visible masks; None when an object is too hidden or too small."""
        def depth(i: int) -> float:
            if i in self.on:
                return depth(self.on[i]) + 0.5
            return self.xy[i][1] + self.items[i].sprite.alpha.shape[0]

        order = sorted(range(len(self.items)), key=depth)
        placed = [(self.items[i].sprite, *self.xy[i]) for i in order]
        masks = R.visible_masks(placed, self.stage.size)
        min_area = MIN_AREA * self.unit ** 2
        objects = []
        for i, m in zip(order, masks):
            area = int(m.sum())
            full = int((self.items[i].sprite.alpha >= 0.5).sum())
            if area < max(min_area, MIN_VISIBLE * full):
                return None
            ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
            bbox = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
            objects.append(SceneObject(self.items[i].kind, self.items[i].color, bbox, m))
        return _Settled(tuple(placed), tuple(objects), {i: k for k, i in enumerate(order)})


@dataclass(frozen=True)
class _Settled:
    placed: tuple[tuple[R.Sprite, int, int], ...]  # draw order
    objects: tuple[SceneObject, ...]  # the masks render_placed will give
    index: dict[int, int]  # layout item -> object index


@dataclass(frozen=True)
class _Draft:
    """An accepted layout and what its command says and means."""

    settled: _Settled
    command: str
    form: str
    answer: tuple[int, ...]  # object indices
    anchors: tuple[int, ...] = ()
    plural: bool = False
    count: int | None = None


def _finish(rng: np.random.Generator, family: str, seed: int, stage: R.Stage, draft: _Draft,
            teach: Teaching | None = None) -> CommandCase:
    scene = R.render_placed(rng, stage, list(draft.settled.placed))
    if len(scene.objects) != len(draft.settled.objects) or any(
            a.bbox != b.bbox for a, b in zip(scene.objects, draft.settled.objects)):
        raise RuntimeError("render_placed drew other masks than visible_masks predicted")  # a bug, not input
    return CommandCase(family, seed, draft.command, scene.frame, scene.objects, draft.answer, draft.form,
                       draft.anchors, draft.plural, draft.count, teach)


def _layouts(rng: np.random.Generator, stage: R.Stage, unit: float, place: Callable[[_Layout], bool],
             spacing: float = 0.0) -> Iterator[tuple[_Layout, _Settled]]:
    """Up to _LAYOUT_TRIES placements of the same objects that place() completes and that settle."""
    for _ in range(_LAYOUT_TRIES):
        lay = _Layout(rng, stage, unit, spacing)
        if not place(lay):
            continue
        settled = lay.settle()
        if settled is not None:
            yield lay, settled


# ----------------------------------------------------------------------------- choosing objects
def _pair(rng: np.random.Generator, exclude: Sequence[tuple[str, str]] = (), kinds: Sequence[str] = KINDS,
          colors: Sequence[str] = COLOR_NAMES) -> tuple[str, str]:
    """A random (kind, colour) from ``kinds`` x ``colors`` that is not in ``exclude``."""
    options = [(k, c) for k in kinds for c in colors if (k, c) not in exclude]
    if not options:
        raise RuntimeError(f"no (kind, colour) left among {kinds} x {colors}")  # a generator bug, not input
    return _pick(rng, options)


def _near_miss(rng: np.random.Generator, of: tuple[str, str], exclude: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """Same kind in another colour, or same colour on another kind: what a sloppy grounder confuses."""
    kind, color = of
    if rng.random() < 0.6:
        return _pair(rng, [*exclude, of], kinds=(kind,))
    return _pair(rng, [*exclude, of], colors=(color,))


def _distractors(rng: np.random.Generator, stage: R.Stage, n: int, exclude: Sequence[tuple[str, str]],
                 miss: tuple[str, str] | None = None, span: tuple[float, float] = (0.0, 1.0)) -> list[_Item]:
    out: list[_Item] = []
    taken = list(exclude)
    for k in range(n):
        pair = _near_miss(rng, miss, taken) if miss is not None and k == 0 else _pair(rng, taken)
        taken.append(pair)
        out.append(_item(rng, stage, *pair, span=span))
    return out


def _place_all(lay: _Layout, items: Sequence[_Item]) -> bool:
    return all(lay.add(it) is not None for it in items)


# ----------------------------------------------------------------------------- families
def _plain_case(rng: np.random.Generator, seed: int, size: tuple[int, int]) -> CommandCase:
    """A render_scene scene, as eval-grounding scores pointing, with the phrasing varied."""
    scene = R.render_scene(seed, size)
    min_area = MIN_AREA * size[0] * size[1] / (480 * 640)
    objs = [i for i, o in enumerate(scene.objects) if o.area >= min_area]
    if not objs:  # nothing big enough to ask about: ask for something absent instead
        kind, color = scene.absent(rng)
        return CommandCase("plain", seed, _style(rng, _say(rng, _Phrase(kind, color), True)), scene.frame,
                           scene.objects, (), "absent")
    i = _pick(rng, objs)
    o = scene.objects[i]
    return CommandCase("plain", seed, _style(rng, _say(rng, _Phrase(o.kind, o.color), True)), scene.frame,
                       scene.objects, (i,), "present")


def _subject_phrase(rng: np.random.Generator, pair: tuple[str, str], bare: float = 0.2) -> _Phrase:
    """The subject as said: with its colour, or (share ``bare``) the kind alone when it need not be."""
    return _Phrase(pair[0], None if rng.random() < bare else pair[1])


def _relation_case(rng: np.random.Generator, stage: R.Stage, unit: float, rel: str) -> _Draft | None:
    if rel == "on":
        anchor_pair = _pair(rng, kinds=_SUPPORTS)
        subj = _pair(rng, [anchor_pair], kinds=_STANDERS)
    else:
        anchor_pair = _pair(rng)
        # in front of / behind overlap their anchor: another kind, so "the cup in front of ..." stays separable
        kinds = [k for k in KINDS if k != anchor_pair[0]] if rel in ("in_front_of", "behind") else KINDS
        subj = _pair(rng, [anchor_pair], kinds=kinds)
    second = _pair(rng, [anchor_pair, subj]) if rel == "between" else None
    n_subj = 2 if rng.random() < 0.7 else 3
    subject = _subject_phrase(rng, subj)
    # "on": the stander is smallish and the support large, as a cup on a book looks
    span_a, span_s = ((0.5, 1.0), (0.0, 0.5)) if rel == "on" else ((0.0, 1.0), (0.0, 1.0))
    anchor = _item(rng, stage, *anchor_pair, span=span_a)
    anchor2 = _item(rng, stage, *second) if second else None
    subs = [_item(rng, stage, *subj, span=span_s) for _ in range(n_subj)]
    taken = [anchor_pair, subj] + ([second] if second else [])
    if subject.color is None:  # "the cup ...": no cup of another colour may sneak in as a subject
        taken += [(subj[0], c) for c in COLOR_NAMES]
    extra = _distractors(rng, stage, int(rng.integers(0, 3)), taken, miss=subj if subject.color else None)
    node = _Relation(rel, subject, _Phrase(*anchor_pair), _Phrase(*second) if second else None)
    text = _style(rng, _say_relation(rng, node))

    first = 2 if anchor2 is not None else 1  # layout index of the subject the command means

    def place(lay: _Layout) -> bool:
        a = lay.add(anchor)
        if a is None:
            return False
        ab = lay.boxes[a]
        if rel in _BY_DISTANCE:
            return _place_by_distance(lay, rel, subs, ab) and _place_all(lay, extra)
        if anchor2 is not None:
            far = 0.45 * stage.size[1]
            b = lay.add(anchor2, ok=lambda bx: math.dist(_centre(bx), _centre(ab)) >= far)
            if b is None:
                return False
            bb = lay.boxes[b]
            test = lambda bx: between(bx, ab, bb)  # noqa: E731
        else:
            test = lambda bx: directional(rel, bx, ab)  # noqa: E731
        stacked = rel == "on"
        # "on", "in front of", "behind": the subject meant may overlap its anchor (masks are checked after)
        overlap = (a,) if rel in ("on", "in_front_of", "behind") else ()
        if lay.add(subs[0], ok=lambda bx: test(bx) is True, overlap=overlap, on=a if stacked else None,
                   near=ab if stacked else None) is None:
            return False
        return all(lay.add(s, ok=lambda bx: test(bx) is False) is not None for s in subs[1:]) and _place_all(lay, extra)

    for _lay, st in _layouts(rng, stage, unit, place):
        answer = _resolve(node, st.objects, unit)
        if answer == (st.index[first],):
            anchors = (st.index[0],) + ((st.index[1],) if anchor2 is not None else ())
            return _Draft(st, text, rel, answer, anchors)
    return None


def _place_by_distance(lay: _Layout, rel: str, subs: Sequence[_Item], ab: Box) -> bool:
    """The first subject nearest (farthest from) the anchor, the others clearly farther (nearer)."""
    reach = max(_w(ab), _h(ab))
    if rel == "farthest":
        t = lay.add(subs[0], ok=lambda bx: _gap(bx, ab) >= 1.2 * reach)
    else:
        t = lay.add(subs[0], ok=lambda bx: _gap(bx, ab) <= 0.25 * reach)
    if t is None:
        return False
    g0, c0 = _distances(lay.boxes[t], ab)
    margin = max(DISTANCE_MARGIN * reach, DISTANCE_MIN_PX * lay.unit) * 1.2
    sign = -1 if rel == "farthest" else 1

    def clear(bx: Box) -> bool:
        g, c = _distances(bx, ab)
        return sign * (g - g0) >= margin and sign * (c - c0) >= margin

    return all(lay.add(s, ok=clear) is not None for s in subs[1:])


# From the left / right twice: the commonest requests, and the only ones with an ordinal beyond the first.
_ORDINAL_FORMS = ("left", "right", "left", "right", "top", "bottom", "largest", "smallest")


_SUPERLATIVE_FORM = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "lowest"}


def _ordinal_case(rng: np.random.Generator, stage: R.Stage, unit: float, how: str) -> _Draft | None:
    pair = _pair(rng)
    n = int(rng.integers(2, 6)) if how in ("left", "right") else int(rng.integers(2, 5))
    index = int(rng.integers(1, n + 1)) if how in ("left", "right") else 1
    phrase = _subject_phrase(rng, pair, bare=0.15)
    if how in ("largest", "smallest"):
        # one instance at the far end of the usual size range, the others at the other end
        big, small = (0.8, 1.0), (0.0, 0.35)
        spans = [big if how == "largest" else small] + [small if how == "largest" else big] * (n - 1)
    else:
        spans = [(0.0, 0.7)] * n
    subs = [_item(rng, stage, *pair, span=s, tilt=0.5) for s in spans]
    taken = [pair] + ([(pair[0], c) for c in COLOR_NAMES] if phrase.color is None else [])
    extra = _distractors(rng, stage, int(rng.integers(1, 3)), taken, miss=pair if phrase.color else None,
                         span=(0.0, 0.7))
    node = _Select(how, index, phrase)
    text = _style(rng, _say_select(rng, node))
    in_row = how in ("left", "right") and rng.random() < 0.6

    def place(lay: _Layout) -> bool:
        if in_row and not _place_row(lay, subs):
            return False
        if not in_row and not _place_all(lay, subs):
            return False
        return _place_all(lay, extra)

    for _lay, st in _layouts(rng, stage, unit, place):
        answer = _resolve(node, st.objects, unit)
        if answer is None or not answer:
            continue
        if how in ("largest", "smallest") and answer != (st.index[0],):
            continue
        said_ordinal = "from the" in text.lower()
        form = f"{_ORDINAL_WORDS[index - 1]}_from_{how}" if said_ordinal else _SUPERLATIVE_FORM.get(how, how)
        return _Draft(st, text, form, answer)
    return None


def _place_row(lay: _Layout, items: Sequence[_Item]) -> bool:
    """Items side by side, bottoms near one line (a row on the table), random gaps, shuffled order."""
    H, W = lay.stage.size
    widths = [it.dims[0] for it in items]
    sep = SEPARATION_PX * lay.unit
    slack = W - sum(widths) - sep * (len(items) - 1) - 4
    if slack < 0:
        return False
    tallest = max(it.dims[1] for it in items)
    line = int(lay.rng.integers(lay.stage.top + tallest + 4, H - 4))
    gaps = lay.rng.dirichlet(np.ones(len(items) + 1)) * slack
    x = 2 + gaps[0]
    for k, i in enumerate(lay.rng.permutation(len(items))):
        bottom = line + int(lay.rng.integers(-12, 13) * lay.unit)
        bottom = min(max(bottom, lay.stage.top + items[i].dims[1] + 2), H - 2)
        if lay.add_at(items[i], int(x), bottom) is None:
            return False
        x += widths[i] + sep + gaps[k + 1]
    return True


def _group(rng: np.random.Generator, stage: R.Stage, unit: float, n: int,
           ) -> tuple[tuple[str, str], list[_Item], list[_Item]] | None:
    """n objects of one (kind, colour) plus near-miss distractors, all small-ish and upright enough to pack."""
    pair = _pair(rng)
    span = (0.0, 0.5)
    group = [_item(rng, stage, *pair, span=span, tilt=0.4) for _ in range(n)]
    n_extra = int(rng.integers(1, 4)) if n <= 4 else int(rng.integers(1, 3))
    extra = _distractors(rng, stage, n_extra, [pair], miss=pair, span=span)
    return pair, group, extra


def _counting_case(rng: np.random.Generator, stage: R.Stage, unit: float, n: int) -> _Draft | None:
    pair, group, extra = _group(rng, stage, unit, n)
    trailer = _pick(rng, _COUNT_TRAILERS)
    text = _style(rng, f"how many {pair[1]} {_plural(pair[0])}{trailer}", question=True)
    for _lay, st in _layouts(rng, stage, unit, lambda lay: _place_all(lay, group + extra), spacing=SEPARATION_PX / 2):
        members = tuple(i for i, o in enumerate(st.objects) if (o.kind, o.color) == pair)
        return _Draft(st, text, f"count_{n}", members, count=len(members))
    return None


_QUANTITY_FORMS = ("all", "all", "exactly", "exactly", "wrong_number")


def _quantity_case(rng: np.random.Generator, stage: R.Stage, unit: float, form: str) -> _Draft | None:
    every = form == "all"
    n = int(rng.integers(1, 7)) if every else int(rng.integers(2, 7))
    said = n
    if form == "wrong_number":  # ask for a number that is not there: must come out not found
        said = _pick(rng, [k for k in _COUNT_WORDS if k != n])
    pair, group, extra = _group(rng, stage, unit, n)
    color, kind = pair[1], pair[0]
    if every:
        text = _pick(rng, (f"all {color} {_plural(kind)}", f"all the {color} {_plural(kind)}",
                           f"all of the {color} {_plural(kind)}", f"every {color} {kind}"))
        form = "all"
    else:
        text = f"{_COUNT_WORDS[said]} {color} {_plural(kind)}"
    text = _style(rng, text)
    for _lay, st in _layouts(rng, stage, unit, lambda lay: _place_all(lay, group + extra), spacing=SEPARATION_PX / 2):
        members = tuple(i for i, o in enumerate(st.objects) if (o.kind, o.color) == pair)
        return _Draft(st, text, form, members if said == len(members) or every else (), plural=True)
    return None


def _negation_case(rng: np.random.Generator, stage: R.Stage, unit: float, _: object) -> _Draft | None:
    kind, color = _pair(rng)
    other = _pair(rng, [(kind, color)], kinds=(kind,))[1]
    n_same = int(rng.integers(1, 4))
    items = [_item(rng, stage, kind, color, span=(0.0, 0.7)) for _ in range(n_same)]
    target = _item(rng, stage, kind, other, span=(0.0, 0.7))
    taken = [(kind, c) for c in COLOR_NAMES]
    extra = _distractors(rng, stage, int(rng.integers(1, 3)), taken, span=(0.0, 0.7))
    if rng.random() < 0.5:  # the other colour on another kind: the colour alone does not tell
        extra[0] = _item(rng, stage, _pair(rng, taken, colors=(other,))[0], other, span=(0.0, 0.7))
    node = _Phrase(kind, not_color=color)
    text = _style(rng, _say(rng, node, lead=True))
    for _lay, st in _layouts(rng, stage, unit, lambda lay: _place_all(lay, [target] + items + extra)):
        return _Draft(st, text, "that_is_not" if "non-" not in text.lower() else "non", (st.index[0],))
    return None


_NESTED_OUTER = ("next_to", "nearest", "left_of", "right_of")
_NESTED_INNER = ("left_of", "right_of", "above", "below", "on", "next_to")


def _nested_case(rng: np.random.Generator, stage: R.Stage, unit: float, pair: tuple[str, str]) -> _Draft | None:
    outer, inner = pair
    if inner == "on":
        b_pair = _pair(rng, kinds=_SUPPORTS)
        a_pair = _pair(rng, [b_pair], kinds=_STANDERS)
    else:
        b_pair = _pair(rng)
        a_pair = _pair(rng, [b_pair])
    s_pair = _pair(rng, [a_pair, b_pair])
    span = (0.0, 0.5)
    b = _item(rng, stage, *b_pair, span=(0.5, 1.0) if inner == "on" else span)
    a1, a2 = (_item(rng, stage, *a_pair, span=span) for _ in range(2))
    s1, s2 = (_item(rng, stage, *s_pair, span=span) for _ in range(2))
    subject = _subject_phrase(rng, s_pair, bare=0.1)
    taken = [a_pair, b_pair, s_pair] + ([(s_pair[0], c) for c in COLOR_NAMES] if subject.color is None else [])
    extra = _distractors(rng, stage, int(rng.integers(0, 2)), taken, span=span)
    inner_node = _Relation(inner, _Phrase(*a_pair), _Phrase(*b_pair))
    node = _Relation(outer, subject, inner_node)
    text = _style(rng, _say_relation(rng, node))

    def place(lay: _Layout) -> bool:
        ib = lay.add(b)
        if ib is None:
            return False
        bb = lay.boxes[ib]
        if inner in _BY_DISTANCE:
            if not _place_by_distance(lay, inner, [a1, a2], bb):
                return False
        else:
            test = lambda bx: directional(inner, bx, bb)  # noqa: E731
            if lay.add(a1, ok=lambda bx: test(bx) is True, overlap=(ib,) if inner == "on" else (),
                       on=ib if inner == "on" else None, near=bb if inner == "on" else None) is None:
                return False
            if lay.add(a2, ok=lambda bx: test(bx) is False) is None:
                return False
        ab1, ab2 = lay.boxes[1], lay.boxes[2]
        if outer in _BY_DISTANCE:
            reach = lambda ab: 0.3 * max(_w(ab), _h(ab))  # noqa: E731
            ok1 = lambda bx: _gap(bx, ab1) <= reach(ab1)  # noqa: E731
            ok2 = lambda bx: _gap(bx, ab2) <= reach(ab2)  # noqa: E731
        else:
            ok1 = lambda bx: directional(outer, bx, ab1) is True  # noqa: E731
            ok2 = lambda bx: directional(outer, bx, ab2) is True and directional(outer, bx, ab1) is False  # noqa: E731
        if lay.add(s1, ok=ok1) is None:
            return False
        # The other subject in the relation to the wrong anchor; where the two relations exclude that ("right
        # of the bottle left of the book"), just clearly not in it to the right one.
        if lay.add(s2, ok=ok2) is None and (outer in _BY_DISTANCE or lay.add(
                s2, ok=lambda bx: directional(outer, bx, ab1) is False) is None):
            return False
        return _place_all(lay, extra)

    for _lay, st in _layouts(rng, stage, unit, place):
        i_b, i_a1, i_a2, i_s1, i_s2 = (st.index[k] for k in range(5))
        if _resolve(node, st.objects, unit) != (i_s1,):
            continue
        # The wrong inner pick must not lead to the right subject, or the inner relation is not needed. For
        # "next to" it leads to the other subject; "left of" is a half-plane, so there it may lead to both.
        wrong = relate(outer, _resolve(subject, st.objects, unit), i_a2, st.objects, unit)
        if wrong == (i_s1,) or (outer in _BY_DISTANCE and wrong != (i_s2,)):
            continue
        return _Draft(st, text, f"{outer}+{inner}", (i_s1,), anchors=(i_b, i_a1))
    return None


def _taught_case(rng: np.random.Generator, seed: int, size: tuple[int, int]) -> CommandCase:
    """Teach in one scene (the object among others), ask in another (among same-kind objects of other colours)."""
    unit = size[0] / 480
    name = _pick(rng, _TAUGHT_NAMES)
    pair = _pair(rng)
    for _ in range(_DRAFTS):
        stage = R.draw_stage(rng, size)
        shown = _item(rng, stage, *pair)
        others = _distractors(rng, stage, int(rng.integers(1, 4)), [pair])
        taught = next(_layouts(rng, stage, unit, lambda lay: _place_all(lay, [shown] + others)), None)
        if taught is None:
            continue
        st = taught[1]
        obj = st.objects[st.index[0]]
        full = int((shown.sprite.alpha >= 0.5).sum())
        if obj.area < 0.95 * full:  # the box must hold the whole object, or the exemplar is of a part
            continue
        teach_scene = R.render_placed(rng, stage, list(st.placed))
        teaching = Teaching(name, teach_scene.frame, obj.bbox, *pair)
        break
    else:
        raise ConfigError(f"could not lay out a taught scene for seed {seed} at size {size}")
    for _ in range(_DRAFTS):
        stage = R.draw_stage(rng, size)
        target = _item(rng, stage, *pair)
        same_kind = [_item(rng, stage, pair[0], c) for c in _other_colors(rng, pair, int(rng.integers(1, 4)))]
        extra = _distractors(rng, stage, int(rng.integers(0, 3)), [(pair[0], c) for c in COLOR_NAMES])
        for _lay, st in _layouts(rng, stage, unit, lambda lay: _place_all(lay, [target] + same_kind + extra)):
            text = _style(rng, name)
            draft = _Draft(st, text, "taught", (st.index[0],))
            return _finish(rng, "taught", seed, stage, draft, teaching)
    raise ConfigError(f"could not lay out a taught scene for seed {seed} at size {size}")


def _other_colors(rng: np.random.Generator, pair: tuple[str, str], n: int) -> list[str]:
    colors = [c for c in COLOR_NAMES if c != pair[1]]
    return [colors[i] for i in rng.choice(len(colors), n, replace=False)]


_UNSAT_FORMS = ("missing_anchor", "missing_subject", "relation_false", "ordinal_beyond", "negation_empty", "absent")


def _unsatisfiable_case(rng: np.random.Generator, stage: R.Stage, unit: float, form: str) -> _Draft | None:
    subj = _pair(rng)
    anchor_pair = _pair(rng, [subj])
    if form in ("missing_anchor", "missing_subject", "relation_false"):
        rel = _pick(rng, _DIRECTIONAL if form == "relation_false" else RELATIONS[:-1])
        node = _Relation(rel, _Phrase(*subj), _Phrase(*anchor_pair))
        text = _say_relation(rng, node)
        present = {"missing_anchor": subj, "missing_subject": anchor_pair}.get(form)
        absent = {"missing_anchor": anchor_pair, "missing_subject": subj}.get(form)
        if form == "relation_false":
            subs = [_item(rng, stage, *subj, span=(0.0, 0.6)) for _ in range(int(rng.integers(1, 3)))]
            anchor = _item(rng, stage, *anchor_pair)
            extra = _distractors(rng, stage, int(rng.integers(0, 3)), [subj, anchor_pair])

            def place(lay: _Layout) -> bool:
                a = lay.add(anchor)
                if a is None:
                    return False
                ab = lay.boxes[a]
                return all(lay.add(s, ok=lambda bx: directional(rel, bx, ab) is False) is not None
                           for s in subs) and _place_all(lay, extra)
        else:
            keep = [_item(rng, stage, *present) for _ in range(int(rng.integers(1, 3)))]
            # a near miss of the absent object is there: the command must not settle for it
            extra = _distractors(rng, stage, int(rng.integers(1, 3)), [subj, anchor_pair], miss=absent)
            place = lambda lay: _place_all(lay, keep + extra)  # noqa: E731
    elif form == "ordinal_beyond":
        n = int(rng.integers(1, 4))
        index = int(rng.integers(n + 1, 6))
        node = _Select(_pick(rng, ("left", "right")), index, _Phrase(*subj))
        text = _say_select(rng, node)
        keep = [_item(rng, stage, *subj, span=(0.0, 0.7)) for _ in range(n)]
        extra = _distractors(rng, stage, int(rng.integers(1, 3)), [subj], miss=subj, span=(0.0, 0.7))
        place = lambda lay: _place_all(lay, keep + extra)  # noqa: E731
    elif form == "negation_empty":
        node = _Phrase(subj[0], not_color=subj[1])
        text = _say(rng, node, lead=True)
        keep = [_item(rng, stage, *subj, span=(0.0, 0.7)) for _ in range(int(rng.integers(1, 4)))]
        extra = _distractors(rng, stage, int(rng.integers(1, 3)), [(subj[0], c) for c in COLOR_NAMES],
                             span=(0.0, 0.7))
        place = lambda lay: _place_all(lay, keep + extra)  # noqa: E731
    else:
        node = _Phrase(*subj)
        text = _say(rng, node, lead=True)
        extra = _distractors(rng, stage, int(rng.integers(2, 5)), [subj], miss=subj)
        place = lambda lay: _place_all(lay, extra)  # noqa: E731
    text = _style(rng, text)
    for _lay, st in _layouts(rng, stage, unit, place):
        if _resolve(node, st.objects, unit) == ():
            return _Draft(st, text, form, ())
    return None


# family -> (generator(rng, stage, unit, variant), the variants drawn from)
_GENERATORS: dict[str, tuple[Callable[..., _Draft | None], tuple]] = {
    "relation": (_relation_case, RELATIONS),
    "ordinal": (_ordinal_case, _ORDINAL_FORMS),
    "counting": (_counting_case, tuple(range(7))),
    "quantity": (_quantity_case, _QUANTITY_FORMS),
    "negation": (_negation_case, (None,)),
    "nested": (_nested_case, tuple((o, i) for o in _NESTED_OUTER for i in _NESTED_INNER)),
    "unsatisfiable": (_unsatisfiable_case, _UNSAT_FORMS),
}
# Crowded families draw the scene's object scale from the lower part of render_scene's range so groups fit.
_SCALE_JITTER = {"counting": (0.9, 1.0), "quantity": (0.9, 1.0), "ordinal": (0.9, 1.05), "nested": (0.9, 1.05)}


# ----------------------------------------------------------------------------- rows of one description
def row_scene(seed: int, kind: str, color: str, n: int, gap: int, size: tuple[int, int] = (480, 640)):
    """n objects of one kind and colour in a row, ``gap`` pixels between their boxes (negative: overlap),
    bottoms near one line; table, light, shadows, lighting and sensor noise as render_scene draws them."""
    rng = np.random.default_rng(seed)
    H, W = size
    scale = rng.uniform(0.9, 1.2)
    bg = R.render_background(rng, size)
    light = (float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 1)))
    for _ in range(6):
        sprites = [R.make_sprite(rng, kind, color, scale, light) for _ in range(n)]
        total = sum(s.alpha.shape[1] for s in sprites) + gap * (n - 1)
        if total <= 600 and max(s.alpha.shape[0] for s in sprites) < H - 80:
            break
        scale *= 0.9 * min(600 / total, 1.0)
    x = int(rng.integers(10, max(11, W - total - 10)))
    base = int(rng.integers(int(H * 0.12) + max(s.alpha.shape[0] for s in sprites), H - 5))
    placed = []
    for s in sprites:
        h, w = s.alpha.shape
        y = min(max(base - h + int(rng.uniform(-0.12, 0.12) * h), int(H * 0.12)), H - h)
        placed.append((s, x, y))
        x += w + gap
    placed.sort(key=lambda p: p[2] + p[0].alpha.shape[0])  # lower = nearer = drawn later
    canvas, objects = R.compose(bg, placed, shadow_strength=float(rng.uniform(0.3, 0.6)))
    canvas *= R._lighting(rng, size)
    return R._degrade(rng, canvas), objects
