"""The parsed form of a command: a small tree of frozen dataclasses.

Leaves are :class:`NounPhrase` (what the dense grounder grounds) and :class:`Negated` (a noun phrase minus one
colour); :class:`Relation`, :class:`Select` and :class:`Quantity` combine them. :class:`Command` is the root
wrapper the rest of vlmedge holds on to.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .vocabulary import RELATION_WORDS

MAX_DEPTH = 2  # relations a command may nest ("the cup next to the bottle left of the book" is 2)


@dataclass(frozen=True)
class NounPhrase:
    """One object description. ``text`` is exactly what the grounder receives ("the red cup", or a taught name).

    ``kind`` is singular even when the command said "cups"; ``plural`` records that it did.
    """

    kind: str
    colour: str | None = None
    plural: bool = False
    taught: bool = False
    text: str = ""

    def __post_init__(self):
        if not self.text:  # the normalised grounding text, derived once so equal phrases compare equal
            object.__setattr__(self, "text", grounding_text(self.kind, self.colour))

    @property
    def label(self) -> str:
        """Short human wording for reasons: "red cup", or "'my mug'" for a taught name."""
        if self.taught:
            return repr(self.text)
        return f"{self.colour} {self.kind}" if self.colour else self.kind

    def describe(self) -> str:
        return f"[{self.text}]" if self.plural else self.text

    def to_dict(self) -> dict:
        return {"type": "noun_phrase", "text": self.text, "kind": self.kind, "colour": self.colour,
                "plural": self.plural, "taught": self.taught}

    def _lines(self) -> list[str]:
        flags = [f for f, on in (("plural", self.plural), ("taught", self.taught)) if on]
        return [f"noun phrase {self.text!r}" + (f" ({', '.join(flags)})" if flags else "")]


@dataclass(frozen=True)
class Negated:
    """Instances of ``base`` (grounded as "the {kind}") that do not match "the {colour} {kind}"."""

    base: NounPhrase
    colour: str

    @property
    def excluded(self) -> NounPhrase:
        """The phrase whose matches are removed: the same kind with the negated colour."""
        return NounPhrase(kind=self.base.kind, colour=self.colour, plural=self.base.plural)

    def describe(self) -> str:
        return f"{self.base.describe()} not {self.colour}"

    def to_dict(self) -> dict:
        return {"type": "not_colour", "base": self.base.to_dict(), "colour": self.colour}

    def _lines(self) -> list[str]:
        return [f"not {self.colour}", *_indent(self.base._lines(), "of: ")]


@dataclass(frozen=True)
class Relation:
    """``subject`` related to ``anchor`` (and ``anchor2`` for "between"). ``relation`` is a key of RELATION_WORDS."""

    relation: str
    subject: Node
    anchor: Node
    anchor2: Node | None = None

    def describe(self) -> str:
        subject = self.subject.describe()
        if isinstance(self.subject, Negated):  # "(the cup not red) left of ...": the negation binds first
            subject = f"({subject})"
        text = f"{subject} {RELATION_WORDS[self.relation]} {_nested(self.anchor)}"
        return text + (f" and {_nested(self.anchor2)}" if self.anchor2 is not None else "")

    def to_dict(self) -> dict:
        return {"type": "relation", "relation": self.relation, "subject": self.subject.to_dict(),
                "anchor": self.anchor.to_dict(), "anchor2": None if self.anchor2 is None else self.anchor2.to_dict()}

    def _lines(self) -> list[str]:
        lines = [f"relation {RELATION_WORDS[self.relation]!r}", *_indent(self.subject._lines(), "subject: "),
                 *_indent(self.anchor._lines(), "anchor: ")]
        if self.anchor2 is not None:
            lines += _indent(self.anchor2._lines(), "anchor2: ")
        return lines


@dataclass(frozen=True)
class Select:
    """One instance of ``of`` picked by position or size.

    ``how`` is leftmost/rightmost/topmost/lowest/largest/smallest, or "ordinal" with ``direction`` the side
    counted from (left/right/top/bottom). ``index`` is 1-based: "the second largest" is largest with index 2.
    """

    how: str
    index: int
    direction: str | None
    of: Node

    def describe(self) -> str:
        return f"{self.phrase}: {_nested(self.of)}"

    @property
    def phrase(self) -> str:
        """ "2nd from the left", "leftmost", "2nd largest"."""
        nth = "" if self.index == 1 else f"{_nth(self.index)} "
        if self.how == "ordinal":
            return f"{_nth(self.index)} from the {self.direction}"
        return nth + self.how

    def to_dict(self) -> dict:
        return {"type": "select", "how": self.how, "index": self.index, "direction": self.direction,
                "of": self.of.to_dict()}

    def _lines(self) -> list[str]:
        return [f"select {self.phrase}", *_indent(self.of._lines(), "of: ")]


@dataclass(frozen=True)
class Quantity:
    """``mode`` "all" (every instance), "exactly" (``n`` of them, found only when exactly n exist) or "count"."""

    mode: str
    n: int | None
    of: Node

    def describe(self) -> str:
        head = {"all": "all", "exactly": f"exactly {self.n}", "count": "how many"}[self.mode]
        return f"{head}: {_nested(self.of)}"

    def to_dict(self) -> dict:
        return {"type": "quantity", "mode": self.mode, "n": self.n, "of": self.of.to_dict()}

    def _lines(self) -> list[str]:
        head = {"all": "all", "exactly": f"exactly {self.n}", "count": "how many"}[self.mode]
        return [f"quantity {head}", *_indent(self.of._lines(), "of: ")]


Node = NounPhrase | Negated | Relation | Select | Quantity


@dataclass(frozen=True)
class Command:
    """A parsed command. ``kind``: "single" (one target), "plural" (every match) or "count" (a number)."""

    text: str
    root: Node
    kind: str

    def noun_phrases(self) -> tuple[NounPhrase, ...]:
        """Every phrase the grounder must ground, each text once, in reading order (subject before anchors).

        A negation contributes both "the {kind}" and "the {colour} {kind}".
        """
        seen: dict[str, NounPhrase] = {}
        for leaf in leaves(self.root):
            seen.setdefault(leaf.text, leaf)
        return tuple(seen.values())

    @property
    def is_plain(self) -> bool:
        """True for one plain singular (not taught) noun phrase: the caller can keep its direct grounding path."""
        r = self.root
        return isinstance(r, NounPhrase) and not r.plural and not r.taught

    @property
    def depth(self) -> int:
        """How deeply relations nest (0 for a command without one)."""
        return relation_depth(self.root)

    def describe(self) -> str:
        """One line, canonical: "[...]" marks a plural phrase, "(...)" a compound anchor."""
        return self.root.describe()

    def to_dict(self) -> dict:
        """JSON-ready form for the wire protocol and ``vlmedge parse --json`` (a fresh copy each call)."""
        return {"text": self.text, "kind": self.kind, "describe": self.describe(), "tree": self.root.to_dict(),
                "noun_phrases": [p.text for p in self.noun_phrases()]}

    # A command is parsed once and published with every frame: its wire form is built once. cached_property
    # writes to the instance __dict__ directly, so it works on this frozen dataclass. Read-only: not a copy.
    @functools.cached_property
    def wire(self) -> dict:
        """``to_dict()`` made once per parsed command, shared: for serializing, not for changing."""
        return self.to_dict()

    def tree_text(self) -> str:
        """The tree drawn one node per line, children indented under their parent."""
        return "\n".join([f"{self.kind} command {self.text!r}", *_indent(self.root._lines(), "")])


def grounding_text(kind: str, colour: str | None = None) -> str:
    """The normalised text the dense grounder receives for a noun phrase: "the red cup", "the cup"."""
    return f"the {colour} {kind}" if colour else f"the {kind}"


def leaves(node: Node):
    """Noun phrases under ``node`` in reading order; a negation yields its base and its excluded phrase."""
    if isinstance(node, NounPhrase):
        yield node
    elif isinstance(node, Negated):
        yield node.base
        yield node.excluded
    elif isinstance(node, Relation):
        yield from leaves(node.subject)
        yield from leaves(node.anchor)
        if node.anchor2 is not None:
            yield from leaves(node.anchor2)
    else:
        yield from leaves(node.of)


def head(node: Node) -> NounPhrase:
    """The noun phrase a node is about: the subject of a relation, the base of a negation."""
    while not isinstance(node, NounPhrase):
        if isinstance(node, Negated):
            node = node.base
        elif isinstance(node, Relation):
            node = node.subject
        else:
            node = node.of
    return node


def is_plural(node: Node) -> bool:
    """Whether a node stands for every match (a plural head) rather than one pick. Select always picks one."""
    if isinstance(node, Select):
        return False
    if isinstance(node, Quantity):
        return True
    return head(node).plural


def relation_depth(node: Node) -> int:
    if isinstance(node, Relation):
        inner = relation_depth(node.anchor)
        if node.anchor2 is not None:
            inner = max(inner, relation_depth(node.anchor2))
        return 1 + max(inner, relation_depth(node.subject))
    if isinstance(node, (Select, Quantity)):
        return relation_depth(node.of)
    return 0


def _nested(node: Node) -> str:
    # Parenthesise compound parts so the one-line form stays unambiguous.
    text = node.describe()
    return text if isinstance(node, (NounPhrase, Negated)) else f"({text})"


def _nth(i: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(i, f"{i}th")


def _indent(lines: list[str], label: str) -> list[str]:
    return [("  " + label + line) if k == 0 else ("  " + line) for k, line in enumerate(lines)]
