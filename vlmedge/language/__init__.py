"""A deterministic command language for robot commands (no language model, torch-free).

:func:`parse` reads a command ("the cup left of the red plate", "all cups", "how many bottles are there") into
a small tree; the caller grounds every text of :meth:`Command.noun_phrases` with its dense grounder and hands
the instances to :func:`resolve`, which applies the image-plane relations, selections and quantities.

    cmd = parse("the cup next to my mug", taught={"my mug"})
    found = {p.text: grounder_instances(p) for p in cmd.noun_phrases()}
    res = resolve(cmd, found, frame_size=(480, 640))
    if res.found: ...  # res.targets, res.anchors; else res.reason says why
"""

from __future__ import annotations

from .compose import Anchor, Instance, Resolution, resolve
from .parse import GRAMMAR_WORDS, CommandSyntaxError, is_teach, parse, read_command, singularize
from .tree import MAX_DEPTH, Command, Negated, Node, NounPhrase, Quantity, Relation, Select, grounding_text

__all__ = [
    "MAX_DEPTH", "Anchor", "Command", "CommandSyntaxError", "Instance", "Negated", "Node", "NounPhrase", "Quantity",
    "Relation", "Resolution", "Select", "grounding_text", "is_teach", "parse", "resolve", "singularize",
    "GRAMMAR_WORDS", "read_command",
]
