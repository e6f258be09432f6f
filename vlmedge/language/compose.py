"""Resolve a parsed command against grounded instances: the relations, selections and quantities of the tree
applied to the instances the dense grounder found for each noun phrase.

Every node evaluates to a ranked set of instances (best first) or, when empty, a reason. A singular command takes
the first; ties are never broken by guessing beyond the documented ranking (relation cost, then the grounder's
order). Geometry is image-plane only, see :mod:`vlmedge.language.geometry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmedge.errors import InputError, did_you_mean

from . import geometry as G
from .tree import Command, Negated, Node, NounPhrase, Quantity, Relation, Select, head, is_plural
from .vocabulary import RELATION_WORDS, SUPERLATIVE_DIRECTION


@dataclass(frozen=True)
class Instance:
    """One grounded object. ``bbox`` is (x0, y0, x1, y1), x1/y1 exclusive; ``mask`` a bool [H, W] array at frame
    resolution or None; ``area`` its pixel count (the box area without a mask: "largest" compares it).
    ``payload`` carries the caller's own object through resolution untouched.
    """

    bbox: tuple[int, int, int, int]
    score: float
    center: tuple[float, float]
    mask: np.ndarray | None = field(compare=False, repr=False)
    area: int
    payload: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        try:
            box = tuple(int(v) for v in self.bbox)
            center = (float(self.center[0]), float(self.center[1]))
        except (TypeError, ValueError, IndexError):
            raise InputError(f"Instance needs bbox (x0, y0, x1, y1) and center (x, y), got {self.bbox!r} and "
                             f"{self.center!r}") from None
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"Instance bbox must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {self.bbox!r}")
        if self.mask is not None and getattr(self.mask, "ndim", None) != 2:
            raise InputError(f"Instance mask must be a 2-D [H, W] array or None, got {type(self.mask).__name__}")
        object.__setattr__(self, "bbox", box)
        object.__setattr__(self, "center", center)

    @classmethod
    def from_box(cls, bbox: Sequence[int], score: float = 1.0, mask: np.ndarray | None = None,
                 payload: Any = None) -> Instance:
        """An instance whose center is the box center and whose area is the mask's pixels (else the box's)."""
        x0, y0, x1, y1 = (int(v) for v in bbox)
        area = int(np.count_nonzero(mask)) if mask is not None else (x1 - x0) * (y1 - y0)
        return cls((x0, y0, x1, y1), float(score), ((x0 + x1) / 2, (y0 + y1) / 2), mask, area, payload)

    @property
    def size(self) -> int:
        """The area "largest"/"smallest" compare: ``area``, or the mask's / box's pixels when area is unset."""
        if self.area > 0:
            return self.area
        if self.mask is not None:
            return int(np.count_nonzero(self.mask))
        return G.width(self.bbox) * G.height(self.bbox)


@dataclass(frozen=True)
class Anchor:
    """An instance a target was resolved against, with the noun phrase it was grounded for."""

    text: str
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class Resolution:
    """The outcome of :func:`resolve`. Not found always comes with a ``reason``; found never guesses."""

    command: Command
    targets: tuple[Instance, ...]
    anchors: tuple[Anchor, ...]
    count: int | None
    found: bool
    reason: str | None

    @property
    def target(self) -> Instance | None:
        """The first target (the only one for a singular command), or None."""
        return self.targets[0] if self.targets else None

    def to_dict(self) -> dict:
        """JSON-ready summary (masks and payloads left out)."""
        return {"command": self.command.text, "kind": self.command.kind, "found": self.found, "reason": self.reason,
                "count": self.count,
                "targets": [{"bbox": list(t.bbox), "score": t.score, "center": list(t.center), "area": t.area}
                            for t in self.targets],
                "anchors": [{"text": a.text, "bbox": list(a.bbox)} for a in self.anchors]}


@dataclass(frozen=True)
class _Hit:
    instance: Instance
    anchors: tuple[Anchor, ...] = ()


@dataclass(frozen=True)
class _Set:
    """Ranked instances of a node, best first; ``reason`` says why it is empty."""

    hits: tuple[_Hit, ...]
    reason: str | None = None


def resolve(command: Command, instances: Mapping[str, Sequence[Instance]],
            frame_size: tuple[int, int] | None = None) -> Resolution:
    """Resolve ``command`` given, for every text of ``command.noun_phrases()``, its instances (best first).

    ``frame_size`` (H, W), when given, is checked against the masks.
    """
    if not isinstance(command, Command):
        raise InputError(f"resolve() takes a parsed Command, got {type(command).__name__}")
    _check_instances(command, instances, frame_size)
    root = command.root
    if isinstance(root, Quantity):
        return _quantity(command, root, _evaluate(root.of, instances))
    result = _evaluate(root, instances)
    hits = result.hits
    if command.kind == "plural":
        return Resolution(command, tuple(h.instance for h in hits), _merge_anchors(hits), len(hits), bool(hits),
                          None if hits else result.reason)
    if not hits:
        return Resolution(command, (), (), None, False, result.reason)
    return Resolution(command, (hits[0].instance,), hits[0].anchors, None, True, None)


def _quantity(command: Command, q: Quantity, result: _Set) -> Resolution:
    hits = result.hits
    targets = tuple(h.instance for h in hits)
    if q.mode == "count":
        return Resolution(command, targets, _merge_anchors(hits), len(hits), True, None)
    if q.mode == "all":
        return Resolution(command, targets, _merge_anchors(hits), len(hits), bool(hits),
                          None if hits else result.reason)
    if len(hits) == q.n:
        return Resolution(command, targets, _merge_anchors(hits), len(hits), True, None)
    reason = result.reason if not hits else f"expected exactly {q.n} of '{_label(q.of)}', found {len(hits)}"
    return Resolution(command, (), (), len(hits), False, reason)


def _check_instances(command: Command, instances: Mapping[str, Sequence[Instance]], frame_size) -> None:
    for phrase in command.noun_phrases():
        if phrase.text not in instances:
            raise InputError(f"no instances given for noun phrase {phrase.text!r}; resolve() needs a list (maybe "
                             "empty) for every text of command.noun_phrases()" + did_you_mean(phrase.text, instances))
        for inst in instances[phrase.text]:
            if not isinstance(inst, Instance):
                raise InputError(f"instances[{phrase.text!r}] must hold Instance objects, got {type(inst).__name__}")
            if frame_size is not None and inst.mask is not None and tuple(inst.mask.shape) != tuple(frame_size):
                raise InputError(f"a mask for {phrase.text!r} is {tuple(inst.mask.shape)}, expected the frame size "
                                 f"{tuple(frame_size)} (H, W)")


def _merge_anchors(hits: Sequence[_Hit]) -> tuple[Anchor, ...]:
    return tuple(dict.fromkeys(a for h in hits for a in h.anchors))


# --- evaluation ---------------------------------------------------------------------------------------------------

def _evaluate(node: Node, instances: Mapping[str, Sequence[Instance]]) -> _Set:
    if isinstance(node, NounPhrase):
        found = instances[node.text]
        return _Set(tuple(_Hit(i) for i in found), None if found else _not_found(node))
    if isinstance(node, Negated):
        return _negated(node, instances)
    if isinstance(node, Relation):
        return _relation(node, instances)
    if isinstance(node, Select):
        return _select(node, _evaluate(node.of, instances))
    return _evaluate(node.of, instances)  # a Quantity below the root: its members


def _not_found(np_: NounPhrase) -> str:
    return f"{np_.label} not found" if np_.taught else f"no {np_.label} found"


def _negated(node: Negated, instances: Mapping[str, Sequence[Instance]]) -> _Set:
    base = instances[node.base.text]
    excluded = instances[node.excluded.text]
    keep = tuple(_Hit(i) for i in base if not any(_same_object(i, e) for e in excluded))
    if keep:
        return _Set(keep)
    if not base:
        return _Set((), _not_found(node.base))
    return _Set((), f"every {node.base.label} found is {node.colour}")


def _same_object(inst: Instance, match: Instance) -> bool:
    """Whether ``inst`` is the object ``match`` found under another phrase: strong overlap, or its center inside
    the match's mask (box when there is no mask)."""
    if G.iou(inst.bbox, match.bbox) >= G.COLOUR_MATCH_IOU:
        return True
    if match.mask is not None:
        return G.point_in_mask(inst.center, match.mask)
    return G.point_in_box(inst.center, match.bbox)


def _is(a: Instance, b: Instance) -> bool:
    # The subject may never be its own anchor: same object, or two phrases grounding one object.
    return a is b or G.same_instance(a.bbox, b.bbox)


def _anchor_hits(node: Node, result: _Set) -> tuple[_Hit, ...]:
    """A plain phrase anchors with every instance ("left of the plate": of any plate); a relation or selection
    that names one object ("left of the bottle next to the book") anchors with its pick only."""
    if isinstance(node, (Relation, Select)) and not is_plural(node):
        return result.hits[:1]
    return result.hits


def _relation(node: Relation, instances: Mapping[str, Sequence[Instance]]) -> _Set:
    words = RELATION_WORDS[node.relation]
    subjects = _evaluate(node.subject, instances)
    if not subjects.hits:
        return _Set((), subjects.reason)
    anchor_set = _evaluate(node.anchor, instances)
    anchors = _anchor_hits(node.anchor, anchor_set)
    if node.relation == "between":
        second = _evaluate(node.anchor2, instances)
        anchors2 = _anchor_hits(node.anchor2, second)
        if not anchors or not anchors2:
            why = anchor_set.reason if not anchors else second.reason
            return _Set((), f"{why}, so nothing can be between {_phrase(node.anchor)} and {_phrase(node.anchor2)}")
        hits = _between(node, subjects.hits, anchors, anchors2)
    elif not anchors:
        return _Set((), f"{anchor_set.reason}, so nothing can be {words} it")
    elif node.relation in G.DIRECTIONAL:
        hits = _directional(node, subjects.hits, anchors)
    else:
        hits = _by_distance(node, subjects.hits, anchors)
    if hits:
        return _Set(hits)
    return _Set((), f"no {_label(node.subject)} is {words} {_phrase(node.anchor)}"
                    + (f" and {_phrase(node.anchor2)}" if node.anchor2 is not None else ""))


def _anchored(node_anchor: Node, a: _Hit) -> tuple[Anchor, ...]:
    # The anchor itself, then whatever it was resolved against (nested relations keep the whole chain).
    return (Anchor(head(node_anchor).text, a.instance.bbox), *a.anchors)


def _directional(node: Relation, subjects: Sequence[_Hit], anchors: Sequence[_Hit]) -> tuple[_Hit, ...]:
    """Subjects passing the test against at least one anchor, nearest (box gap, then center distance) first."""
    test, part = G.DIRECTIONAL[node.relation]
    ranked = []
    for rank, s in enumerate(subjects):
        si = s.instance
        probe = si.center if part == "center" else si.bbox
        best = _nearest_anchor(si, anchors, lambda ai, probe=probe: test(probe, ai.bbox))
        if best is not None:
            ranked.append((best[0], rank, s, best[1]))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return tuple(_Hit(s.instance, _anchored(node.anchor, a)) for _, _, s, a in ranked)


def _nearest_anchor(si: Instance, anchors: Sequence[_Hit], keep=None) -> tuple[tuple[float, float], _Hit] | None:
    """The anchor nearest to instance ``si`` by (box gap, centre distance), among those that are not ``si``
    itself and that ``keep(anchor_instance)`` accepts; ``((gap, distance), anchor)`` or None."""
    best = None
    for a in anchors:
        ai = a.instance
        if _is(si, ai) or (keep is not None and not keep(ai)):
            continue
        cost = (G.gap(si.bbox, ai.bbox), G.distance(si.center, ai.center))
        if best is None or cost < best[0]:
            best = (cost, a)
    return best


def _by_distance(node: Relation, subjects: Sequence[_Hit], anchors: Sequence[_Hit]) -> tuple[_Hit, ...]:
    """next to / nearest / farthest: each subject measured to its nearest anchor (box gap, then centers).

    "next to" keeps every subject near its anchor (always at least the nearest one); "nearest" and "farthest"
    are superlatives and keep exactly one.
    """
    ranked = []
    for rank, s in enumerate(subjects):
        si = s.instance
        best = _nearest_anchor(si, anchors)
        if best is not None:
            ranked.append((best[0], rank, s, best[1]))
    if not ranked:
        return ()
    if node.relation == "farthest":
        top = max(ranked, key=lambda r: (r[0], -r[1]))
        return (_Hit(top[2].instance, _anchored(node.anchor, top[3])),)
    ranked.sort(key=lambda r: (r[0], r[1]))
    if node.relation == "nearest":
        ranked = ranked[:1]
    else:
        ranked = [r for k, r in enumerate(ranked) if k == 0 or G.near(r[2].instance.bbox, r[3].instance.bbox)]
    return tuple(_Hit(s.instance, _anchored(node.anchor, a)) for _, _, s, a in ranked)


def _between(node: Relation, subjects: Sequence[_Hit], first: Sequence[_Hit],
             second: Sequence[_Hit]) -> tuple[_Hit, ...]:
    """Subjects whose center projects inside the segment joining two distinct anchors, closest to it first."""
    ranked = []
    for rank, s in enumerate(subjects):
        si = s.instance
        best = None
        for a in first:
            if _is(si, a.instance):
                continue
            for b in second:
                if _is(si, b.instance) or _is(a.instance, b.instance):
                    continue
                cost = G.between(si.center, a.instance.center, b.instance.center)
                if cost is not None and (best is None or cost < best[0]):
                    best = (cost, a, b)
        if best is not None:
            ranked.append((best[0], rank, s, best[1], best[2]))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return tuple(_Hit(s.instance, _anchored(node.anchor, a) + _anchored(node.anchor2, b))
                 for _, _, s, a, b in ranked)


_SORT_KEYS = {
    "left": lambda i: i.center[0], "right": lambda i: -i.center[0],
    "top": lambda i: i.center[1], "bottom": lambda i: -i.center[1],
    "largest": lambda i: -i.size, "smallest": lambda i: i.size,
}


def _select(node: Select, result: _Set) -> _Set:
    """Order by position (center x or y) or size and take the ``index``-th; ties keep the grounder's order."""
    if not result.hits:
        return result
    direction = node.direction if node.how == "ordinal" else SUPERLATIVE_DIRECTION.get(node.how, node.how)
    ordered = sorted(result.hits, key=lambda h: _SORT_KEYS[direction](h.instance))
    if len(ordered) < node.index:
        return _Set((), f"found only {len(ordered)} of '{_label(node.of)}', so there is no {node.phrase}")
    return _Set((ordered[node.index - 1],))


# --- wording of reasons -------------------------------------------------------------------------------------------

def _label(node: Node) -> str:
    """A node as a bare noun for reasons: "red cup", "cup that is not red", "cup left of the plate"."""
    if isinstance(node, NounPhrase):
        return node.label
    if isinstance(node, Negated):
        return f"{node.base.label} that is not {node.colour}"
    if isinstance(node, Relation):
        text = f"{_label(node.subject)} {RELATION_WORDS[node.relation]} {_phrase(node.anchor)}"
        return text + (f" and {_phrase(node.anchor2)}" if node.anchor2 is not None else "")
    if isinstance(node, Select):
        return f"{node.phrase} {_label(node.of)}"
    return _label(node.of)


def _phrase(node: Node) -> str:
    """A node as it would be said after a relation word: "the plate", "'my mug'"."""
    if isinstance(node, NounPhrase) and node.taught:
        return node.label
    return f"the {_label(node)}"
