"""Commands on top of noun-phrase grounding: "the cup next to the plate", "the leftmost bottle", "how many cups".

A command is parsed once (``vlmedge.language``) into a small tree; every noun phrase it names is grounded
with the dense maps like a plain query; the instances found for each phrase are then composed with
image-plane geometry (``vlmedge.language.resolve``). A plain singular noun phrase ("the red cup") skips
the composition and keeps the plain path: its own text is grounded as given and every region is a target,
best first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from vlmedge.language import Anchor, Command, Instance, NounPhrase, Resolution, grounding_text, read_command, resolve
from vlmedge.runtime.grounding.results import CommandResult, Target

MAX_PARSED = 1024  # parsed commands kept; a control socket can send any number of distinct commands



@dataclass(frozen=True, eq=False)
class Plan:
    """The commands of one ``match`` call, parsed, and the noun-phrase texts that must be grounded for them.
    Made once per distinct set of queries (``CommandParser.plan`` keeps it): a frame only looks it up."""

    commands: tuple[Command, ...]
    phrases: tuple[str, ...]  # texts to ground, each once, in first-use order
    variants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # phrase -> texts whose maps it takes
    by_command: tuple[tuple[str, ...], ...] = ()  # per command, the phrases it grounds (subject first)


def _phrase_nodes(command: Command) -> tuple[NounPhrase, ...]:
    if command.is_plain:  # grounded by its own text, as typed
        return (replace(command.root, text=command.text),)
    return command.noun_phrases()


def _variants(node: NounPhrase, colours: Sequence[str]) -> tuple[str, ...]:
    """The texts whose maps make up this phrase's map: itself, plus its coloured variants when it names no
    colour (and is a parsed kind, not a taught name or a free description grounded as given)."""
    if node.colour is not None or node.taught or node.kind == node.text or not colours:
        return (node.text,)
    return (node.text, *(grounding_text(node.kind, c) for c in colours if grounding_text(node.kind, c) != node.text))


class CommandParser:
    """Parses commands with the taught names known at the time; keeps the last ``MAX_PARSED`` parses
    (a command string arrives on every frame, its parse changes only when the taught names do)."""

    def __init__(self, limit: int = MAX_PARSED):
        self._cache: OrderedDict[tuple[str, frozenset], Command] = OrderedDict()
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._limit = int(limit)

    def parse(self, text: str, taught: Collection[str] = ()) -> Command:
        key = (text, frozenset(taught))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        command = read_command(text, taught=key[1])
        if command.text != text:  # the parser strips outer spaces; results answer to the query as given
            command = replace(command, text=text)
        self._cache[key] = command
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return command

    def plan(self, texts: Sequence[str], taught: Collection[str] = (), colours: Sequence[str] = ()) -> Plan:
        """``colours``: the attribute words the model was taught (``grounding.expand_colours`` of the bundle).
        A noun phrase without a colour is then also grounded as each coloured variant ("the cup" as "the red
        cup", "the blue cup", ...) and its map is the largest of them: a model that only ever read coloured
        captions finds a cup of any colour that way."""
        key = (tuple(texts), frozenset(taught), tuple(colours))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(key[0], key[1], key[2])
            self._plans[key] = plan
            if len(self._plans) > self._limit:
                self._plans.popitem(last=False)
        return plan

    def _plan(self, texts: tuple[str, ...], taught: frozenset, colours: tuple[str, ...]) -> Plan:
        commands = tuple(self.parse(t, taught) for t in texts)
        phrases: dict[str, tuple[str, ...]] = {}
        by_command = []
        for c in commands:
            nodes = _phrase_nodes(c)
            by_command.append(tuple(n.text for n in nodes))
            for node in nodes:
                if node.text not in phrases:
                    phrases[node.text] = _variants(node, colours)
        return Plan(commands, tuple(phrases), phrases, tuple(by_command))


def _instance(t: Target) -> Instance | None:
    x0, y0, x1, y1 = t.bbox
    if x1 <= x0 or y1 <= y0:  # a region thinner than a pixel after scaling: no geometry to compare
        return None
    return Instance((x0, y0, x1, y1), t.score, t.center or ((x0 + x1) / 2, (y0 + y1) / 2), None,
                    max(int(t.area), 1), payload=t)


def instances_by_phrase(targets: Mapping[str, Sequence[Target]], min_area: float = 0.0,
                        min_score: float = 0.0, score_margin: float | None = None) -> dict[str, list[Instance]]:
    """The found targets of every phrase as ``language.Instance`` s (the target rides along as payload).

    Regions smaller than ``min_area`` pixels are left out: a composition counts and orders instances, and a
    sliver where one patch barely passed the threshold is not an object (a plain query still reports it).
    So are regions scoring below ``min_score``, or more than ``score_margin`` below the best region of the
    phrase: objects that fit a description score alike, a look-alike (a red plate among red cups) lower."""
    out: dict[str, list[Instance]] = {}
    for phrase, ts in targets.items():
        kept = [t for t in ts if t.found and t.area >= min_area and t.score >= min_score]
        if score_margin is not None and kept:
            best = max(t.score for t in kept)
            kept = [t for t in kept if t.score >= best - score_margin]
        out[phrase] = [i for i in (_instance(t) for t in kept) if i is not None]
    return out


def _as_target(inst: Instance, command: str, anchors: tuple[Anchor, ...]) -> Target:
    return replace(inst.payload, query=command, anchors=anchors)


def _not_found(command: str, best_score: float, reason: str | None) -> Target:
    return Target(query=command, found=False, score=best_score, reason=reason)


def resolve_command(command: Command, phrase_targets: Mapping[str, Sequence[Target]],
                    frame_size: tuple[int, int], min_area: float = 0.0, min_score: float = 0.0,
                    score_margin: float | None = None) -> CommandResult:
    """One command's result from the targets of its noun phrases (``min_area``, ``min_score``, ``score_margin``:
    see ``instances_by_phrase``)."""
    if command.is_plain:  # its phrase is its own text: the regions are its targets as they are
        targets = tuple(phrase_targets[command.text])
        found = targets[0].found
        return CommandResult(command.text, command, found, targets, (), None, None if found else "not found")
    res: Resolution = resolve(command, instances_by_phrase(phrase_targets, min_area, min_score, score_margin),
                              frame_size)
    if res.found and res.targets:
        targets = tuple(_as_target(i, command.text, res.anchors) for i in res.targets)
    else:  # the best score any of its phrases reached, as a plain query's not-found target carries
        best_score = max((t.score for ts in phrase_targets.values() for t in ts), default=0.0)
        targets = (_not_found(command.text, best_score, res.reason),)
    return CommandResult(command.text, command, bool(res.found), targets, res.anchors, res.count, res.reason)
