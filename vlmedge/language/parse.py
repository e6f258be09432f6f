"""Parse a robot command into a :class:`~vlmedge.language.tree.Command`. Deterministic, no language model.

Grammar (words are case-insensitive, "the"/"a"/"an" optional, commas and trailing "."/"?"/"!" ignored)::

    command   := "how many" expr [COUNT_TRAILER] | ("all" ["of"] | "every" | "each") expr
               | COUNT expr | "one" expr | expr
    expr      := leaf [clause]
    leaf      := TAUGHT_NAME
               | [DET] [SUPERLATIVE | ORDINAL [SUPERLATIVE]] ["non-COLOUR"] [COLOUR] KIND
                 ["from the" DIRECTION] [POSITION_PHRASE]
    clause    := [("that" | "which") ("is" | "are")] ("not" COLOUR [clause] | relation)
    relation  := RELATION expr | "between" expr "and" expr

A relation's anchor is a whole ``expr``, so relations chain to the right: "the cup next to the bottle left of
the book" is cup next to (bottle left of book). At most MAX_DEPTH relations nest.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Collection
from typing import NamedTuple

from vlmedge.errors import InputError, did_you_mean

from . import vocabulary as V
from .tree import MAX_DEPTH, Command, Negated, Node, NounPhrase, Quantity, Relation, Select, is_plural


class CommandSyntaxError(InputError):
    """A command the grammar cannot read. ``position`` is the character index of ``word`` in ``command``."""

    def __init__(self, command: str, position: int, word: str, problem: str, suggestion: str | None = None,
                 hint: str = ""):
        self.command = command
        self.position = position
        self.word = word
        self.problem = problem
        self.suggestion = suggestion
        shown = re.sub(r"\s", " ", command)  # same length, so the caret stays under the word
        caret = " " * position + "^" * max(1, len(word))
        super().__init__(f"{problem}{hint}\n    {shown}\n    {caret}")


class Token(NamedTuple):  # a tuple: a command makes many and a frozen dataclass is slower to build
    text: str  # lower-case
    raw: str  # as written, for error messages
    start: int


# A word may carry inner apostrophes and hyphens ("isn't", "non-red", "t-shirt"); anything else is one character.
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*|\S")
_IGNORED = frozenset(",\"'\u2018\u2019\u201c\u201d")  # commas and stray quotes carry no meaning here
_TRAILING = frozenset(".?!")
_BIG_ORDINAL = re.compile(r"\d+(st|nd|rd|th)")



def _by_first_word(phrases: dict[str, str]) -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """Phrases as word tuples grouped by their first word, longest first so the longest match wins."""
    table: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for phrase, value in sorted(phrases.items(), key=lambda kv: -len(kv[0].split())):
        words = tuple(phrase.split())
        table.setdefault(words[0], []).append((words, value))
    return table


_RELATIONS = _by_first_word(V.RELATION_PHRASES)
_POSITIONS = _by_first_word(V.POSITION_PHRASES)
_TRAILERS = [tuple(p.split()) for p in V.COUNT_TRAILERS]
# What a misplaced word is compared with to suggest a fix.
_KEYWORDS = sorted(set(V.RELATION_PHRASES) | set(V.SUPERLATIVES) | set(V.ORDINAL_WORDS) | set(V.POSITION_PHRASES)
                   | {f"from the {d}" for d in V.DIRECTIONS} | {"that is not", "how many", "all", "every"})
_QUANTITY_WORDS = frozenset(V.ALL_WORDS) | frozenset(V.COUNTS) | frozenset(V.NUMBER_WORDS) | {"how"}
_MODIFIERS = sorted(set(V.SUPERLATIVES) | set(V.ORDINAL_WORDS))
# A first object word this close to a modifier is a typo, not an object ("the lefmost cup").
_MODIFIER_TYPO_CUTOFF = 0.85
# A word this close to a relation word ends an object name before "of" ("the cup lefft of the plate").
_RELATION_TYPO_CUTOFF = 0.75
# "non-rde" is a typo of "non-red", but "non-stick" is a kind of pan.
_NON_COLOUR_TYPO_CUTOFF = 0.6
_RELATION_HEADS = sorted({p.split()[0] for p in V.RELATION_PHRASES if len(p.split()) > 1} | {"left", "right", "front"})
_SUGGEST_CUTOFF = 0.5  # the cutoff did_you_mean uses, so the attribute and the message agree
# A stray word is only called a typo of a keyword this close to it ("with" is no typo of "fifth").
_UNPLACED_CUTOFF = 0.7


def parse(command: str, taught: Collection[str] = ()) -> Command:
    """Parse ``command``; ``taught`` names (e.g. {"my mug"}) may stand wherever a noun phrase can.

    Raises CommandSyntaxError (an InputError) pointing at the word that does not fit.
    """
    if not isinstance(command, str):
        raise InputError(f"a command must be a str, got {type(command).__name__}")
    text = command.strip()
    tokens = _tokenize(text)
    if not tokens:
        raise CommandSyntaxError(text, 0, "", "empty command: expected an object such as 'the red cup'",
                                 suggestion="the red cup")
    return _Parser(text, tokens, _taught_table(taught)).command()


# Words that make a text a command of the language (a relation, ordinal, superlative, quantity or negation).
# A text without any of them that the grammar cannot read ("person wearing a red hat", an embedding registered
# under "probe a") is an open-vocabulary description and is grounded as given, like every query before the
# language existed; a text WITH one of them that does not parse is a malformed command and an error.
GRAMMAR_WORDS = (frozenset(w for phrase in V.RELATION_PHRASES for w in phrase.split())
                  | frozenset(V.SUPERLATIVES) | frozenset(w for p in V.POSITION_PHRASES for w in p.split())
                  | frozenset(V.ORDINAL_WORDS) | frozenset(V.ORDINALS_BEYOND) | frozenset(V.COUNTS)
                  | frozenset(V.ALL_WORDS) | {"how", "many", "not", "non", "isn't"}) - frozenset(V.DETERMINERS) - {"of"}


def read_command(command: str, taught: Collection[str] = ()) -> Command:
    """How the runtime reads a query: :func:`parse`, except that a text the grammar cannot read and that holds
    no grammar word (and no near-miss of one) is an open-vocabulary description, grounded as given."""
    try:
        return parse(command, taught)
    except CommandSyntaxError as e:
        words = command.lower().replace("-", " ").split()
        if e.suggestion is not None or GRAMMAR_WORDS.intersection(words):
            raise
        return Command(command, NounPhrase(kind=command, text=command), "single")


def is_teach(text: str) -> str | None:
    """The NAME of a "teach NAME" control command, or None when ``text`` is not one.

    Teaching is a control operation, not part of the grammar; this only recognises it. "teach" with no name
    raises CommandSyntaxError.
    """
    m = re.match(r"\s*teach\b(.*)\Z", text, re.IGNORECASE | re.DOTALL)
    if not m:
        return None
    name = " ".join(m.group(1).split()).strip(" :.!?\"'\u2018\u2019\u201c\u201d")
    if not name:
        stripped = text.strip()
        raise CommandSyntaxError(stripped, len(stripped), "", "'teach' needs a name, e.g. 'teach my mug'",
                                 suggestion="teach my mug")
    return name


def _tokenize(text: str) -> list[Token]:
    tokens = [Token(m.group().lower().replace("\u2019", "'"), m.group(), m.start()) for m in _TOKEN.finditer(text)]
    tokens = [t for t in tokens if t.text not in _IGNORED]
    while tokens and tokens[-1].text in _TRAILING:
        tokens.pop()
    for t in tokens:
        if len(t.text) == 1 and not t.text.isalnum():
            raise CommandSyntaxError(text, t.start, t.raw, f"unexpected character {t.raw!r}")
    return tokens


def _taught_table(taught: Collection[str]) -> dict[tuple[str, ...], str]:
    """Taught names keyed by their words, so a name matches however the command spaces or cases it."""
    if isinstance(taught, str):
        taught = (taught,)  # one name passed bare would otherwise be read letter by letter
    table: dict[tuple[str, ...], str] = {}
    for name in taught:
        name = " ".join(str(name).split())
        key = tuple(t.text for t in _tokenize(name)) if name else ()
        if key:
            table.setdefault(key, name)
    return table


def singularize(word: str) -> tuple[str, bool]:
    """``(singular, was_plural)`` by simple English rules plus the irregulars table."""
    if word in V.INVARIANT_NOUNS:
        return word, False
    if word in V.IRREGULAR_PLURALS:
        return V.IRREGULAR_PLURALS[word], True
    if len(word) <= 2 or not word.endswith("s") or word.endswith(("ss", "us", "is", "'s")):
        return word, False  # "glass", "bus", "iris" are already singular
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y", True  # batteries
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2], True  # glasses, dishes, matches, boxes
    return word[:-1], True


class _Parser:
    def __init__(self, text: str, tokens: list[Token], taught: dict[tuple[str, ...], str]):
        self.text = text
        self.toks = tokens
        self.words = [t.text for t in tokens]
        self.taught = sorted(taught.items(), key=lambda kv: -len(kv[0]))
        self.pos = 0
        self.level = 0  # relations enclosing the expression being parsed
        self.count_context = False
        self.kind_spans: list[tuple[int, int]] = []  # token ranges read as object names, for typo hints

    # --- token helpers ---------------------------------------------------------------------------------------

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.words[i] if i < len(self.words) else None

    def at(self, phrase: tuple[str, ...], i: int | None = None) -> bool:
        i = self.pos if i is None else i
        return tuple(self.words[i:i + len(phrase)]) == phrase

    def fail(self, i: int | None, problem: str, suggestion: str | None = None, hint: str = ""):
        """Raise at token ``i`` (None or past the end: at the end of the command)."""
        if i is None or i >= len(self.toks):
            raise CommandSyntaxError(self.text, len(self.text), "", problem, suggestion, hint)
        t = self.toks[i]
        raise CommandSyntaxError(self.text, t.start, t.raw, problem, suggestion, hint)

    def where(self) -> str:
        return f"{self.toks[self.pos].raw!r}" if self.pos < len(self.toks) else "the end of the command"

    # --- command level ---------------------------------------------------------------------------------------

    def command(self) -> Command:
        w0, w1 = self.peek(), self.peek(1)
        if w0 in V.DETERMINERS and (w1 in V.COUNTS or (w1 or "").isdigit()):
            self.pos += 1  # "the two cups"
            w0, w1 = w1, self.peek(1)
        if w0 == "how" and w1 == "many":
            self.pos += 2
            self.count_context = True
            node = self.quantity_of("how many")
            self._count_trailer()
            root, kind = Quantity("count", None, node), "count"
        elif w0 in V.ALL_WORDS:
            self.pos += 1
            if self.peek() == "of":
                self.pos += 1
            root, kind = Quantity("all", None, self.quantity_of(w0)), "plural"
        elif w0 in V.COUNTS or (w0 or "").isdigit() or w0 in V.NUMBER_WORDS:
            n = self._count(self.pos)
            self.pos += 1
            if n == 1:
                root = self.expr()
                kind = "single"
            else:
                root, kind = Quantity("exactly", n, self.quantity_of(w0)), "plural"
        else:
            root = self.expr()
            kind = "plural" if is_plural(root) else "single"
        if self.pos < len(self.toks):
            self.unexpected(self.pos, "expected a relation (e.g. 'left of', 'next to') or the end of the command")
        return Command(self.text, root, kind)

    def quantity_of(self, word: str) -> Node:
        start = self.pos
        node = self.expr()
        if isinstance(node, Select):
            self.fail(start, f"'{word}' cannot be combined with '{node.phrase}', which picks a single object")
        return node

    def _count(self, i: int) -> int:
        word = self.words[i]
        n = V.COUNTS.get(word, V.NUMBER_WORDS.get(word))
        if n is None and word.isdigit():
            n = int(word)
        if n == 1:
            return 1
        if n is None or not V.MIN_COUNT <= n <= V.MAX_COUNT:
            self.fail(i, f"counts go from {V.MIN_COUNT} to {V.MAX_COUNT}, got {self.toks[i].raw!r}; "
                         "use 'all ...' for every instance or 'how many ...' to count", suggestion="all")
        return n

    def _trailer_ends_at(self, i: int) -> bool:
        """A count trailer ("do you see", "can you see") from token ``i`` to the end: not part of a name."""
        return any(self.words[i:] == list(phrase) for phrase in _TRAILERS)

    def _count_trailer(self) -> None:
        for phrase in _TRAILERS:
            if self.at(phrase) and self.pos + len(phrase) == len(self.toks):
                self.pos += len(phrase)
                return

    # --- expressions -----------------------------------------------------------------------------------------

    def expr(self) -> Node:
        node = self.taught_leaf()
        select = None
        if node is None and self.peek() in V.DETERMINERS:
            self.pos += 1
            node = self.taught_leaf()
        if node is None:
            node, select = self.described_leaf()
        node = self.clause(node)
        if select is not None:
            how, index, direction = select
            node = Select(how, index, direction, node)
        return node

    def taught_leaf(self) -> NounPhrase | None:
        for key, name in self.taught:
            if self.at(key):
                self.pos += len(key)
                return NounPhrase(kind=name, taught=True, text=name)
        return None

    def described_leaf(self) -> tuple[Node, tuple[str, int, str | None] | None]:
        """[modifier] [non-COLOUR] [COLOUR] KIND [from the DIRECTION] [on the left]."""
        select = self.modifier()
        negated = self.non_colour()
        colour_at = self.pos
        colour = None
        if self.peek() in V.COLOURS:
            colour = self.peek()
            self.pos += 1
        words = self.kind_words()
        if not words:
            if colour is None:
                self._no_object()
            words, colour = [colour], None  # "the orange": the colour word is the object
            self.kind_spans.append((colour_at, colour_at + 1))
        if negated and colour:
            self.fail(colour_at, f"'{colour}' contradicts 'non-{negated}': give one colour condition")
        leaf = _noun(words, colour)
        node: Node = Negated(leaf, negated) if negated else leaf
        if select is not None and select[0] == "ordinal":
            select = ("ordinal", select[1], self.from_direction() or "left")  # no side given counts from the left
        elif self.peek() == "from" and select is not None:
            self.fail(self.pos, f"'{select[0]}' already says the side; 'from the ...' goes with ordinals "
                                "('the second cup from the right')")
        found = self.position_at(self.pos)
        if found is not None:
            phrase, how = found
            if select is not None:
                self.fail(self.pos, f"'{' '.join(phrase)}' repeats a position already given")
            self.pos += len(phrase)
            select = (how, 1, V.SUPERLATIVE_DIRECTION.get(how))
        return node, select

    def modifier(self) -> tuple[str, int, str | None] | None:
        """A superlative ("leftmost"), an ordinal ("second"), or both ("second largest")."""
        w = self.peek()
        if w in V.SUPERLATIVES:
            self.pos += 1
            how = V.SUPERLATIVES[w]
            return how, 1, V.SUPERLATIVE_DIRECTION.get(how)
        if w in V.ORDINALS:
            self.pos += 1
            index = V.ORDINALS[w]
            if self.peek() in V.SUPERLATIVES:  # "the second largest cup"
                how = V.SUPERLATIVES[self.peek()]
                self.pos += 1
                return how, index, V.SUPERLATIVE_DIRECTION.get(how)
            return "ordinal", index, None
        if w in V.ORDINALS_BEYOND or (w is not None and _BIG_ORDINAL.fullmatch(w)):
            self.fail(self.pos, f"ordinals go from first to {V.ORDINAL_WORDS[-1]}, got {self.toks[self.pos].raw!r}; "
                                "count from the other side instead ('the second cup from the right')",
                      suggestion=V.ORDINAL_WORDS[-1])
        return None

    def non_colour(self) -> str | None:
        """"non-red" / "non red" -> "red". A "non-" word that is no colour ("non-stick") is part of the object."""
        w = self.peek()
        if w == "non" and self.peek(1) in V.COLOURS:
            self.pos += 2
            return self.words[self.pos - 1]
        if w is not None and w.startswith("non-"):
            rest = w[4:]
            if rest in V.COLOURS:
                self.pos += 1
                return rest
            if difflib.get_close_matches(rest, V.COLOURS, n=1, cutoff=_NON_COLOUR_TYPO_CUTOFF):
                self.fail(self.pos, f"unknown colour {rest!r} after 'non-'", _close(rest, V.COLOURS),
                          did_you_mean(rest, V.COLOURS))
        return None

    def kind_words(self) -> list[str]:
        """The object name: plain words up to a relation, a clause word or the end."""
        start = self.pos
        words: list[str] = []
        while self.pos < len(self.toks):
            w = self.words[self.pos]
            if self.relation_at(self.pos) or self.position_at(self.pos) or self._trailer_ends_at(self.pos):
                break
            if w in V.STOP_WORDS:
                if w == "of" and words and self._of_inside_name(words[-1]):
                    words.append(w)
                    self.pos += 1
                    continue
                break
            if not w[0].isalpha():
                break
            if not words and w not in V.COLOURS:
                typo = _modifier_typo(w)
                if typo:
                    self.fail(self.pos, f"unknown word {self.toks[self.pos].raw!r}", typo,
                              did_you_mean(w, _MODIFIERS))
            words.append(w)
            self.pos += 1
        if words:
            self.kind_spans.append((start, self.pos))
        return words

    def _of_inside_name(self, previous: str) -> bool:
        """"bag of chips": "of" joins two plain words. Not after a near-relation word ("lefft of")."""
        nxt = self.peek(1)
        if nxt is None or nxt in V.STOP_WORDS or not nxt[0].isalpha() or self.relation_at(self.pos + 1):
            return False
        return not _near_relation_word(previous)

    def _no_object(self) -> None:
        w = self.peek()
        if w in _QUANTITY_WORDS or (w or "").isdigit():
            self.fail(self.pos, "quantities ('all', 'two', 'how many') may only start a command")
        if w is not None and self.relation_at(self.pos):
            self.fail(self.pos, f"expected an object before {self.where()}, e.g. 'the cup {w} ...'")
        if w is None:
            self.fail(None, "expected an object (e.g. 'cup') at the end of the command")
        self.unexpected(self.pos, f"expected an object (e.g. 'cup') but found {self.where()}")

    def from_direction(self) -> str | None:
        if self.peek() != "from":
            return None
        self.pos += 1
        if self.peek() == "the":
            self.pos += 1
        w = self.peek()
        if w not in V.DIRECTIONS:
            self.fail(self.pos, f"expected left, right, top or bottom after 'from the', found {self.where()}",
                      _close(w or "", V.DIRECTIONS), did_you_mean(w or "", V.DIRECTIONS))
        self.pos += 1
        return w

    def clause(self, node: Node) -> Node:
        """Optional "that is not COLOUR" and/or a relation after a leaf."""
        intro = self.pos
        negated = self.relative_intro()
        if negated or self.peek() == "not":
            if self.peek() == "not":
                self.pos += 1
            w = self.peek()
            if w not in V.COLOURS:
                self.fail(self.pos, f"expected a colour after 'not', found {self.where()}",
                          _close(w or "", V.COLOURS), did_you_mean(w or "", V.COLOURS))
            self.pos += 1
            if not isinstance(node, NounPhrase) or node.taught:
                self.fail(intro, "only an object with a kind can be negated by colour ('the cup that is not red')")
            if node.colour:
                self.fail(intro, f"'{node.colour} {node.kind}' cannot also be 'not {w}': give one colour condition")
            node = Negated(node, w)
            intro = self.pos
            self.relative_intro()  # "the cup that is not red, which is left of the plate"
        if self.relation_at(self.pos):
            return self.relation(node)
        if self.pos != intro:
            self.unexpected(self.pos, f"expected a relation (e.g. 'left of') after "
                                      f"{' '.join(t.raw for t in self.toks[intro:self.pos])!r}")
        return node

    def relative_intro(self) -> bool:
        """Skip "that is" / "which are" / "that's" (and a bare "are" when counting). True for "that isn't"."""
        w, w1 = self.peek(), self.peek(1)
        if w in ("that", "which"):
            if w1 in ("is", "are"):
                self.pos += 2
            elif w1 in ("isn't", "aren't"):
                self.pos += 2
                return True
            elif w1 == "not" or (w1 is not None and self.relation_at(self.pos + 1)):
                self.pos += 1
        elif w == "that's":
            self.pos += 1
        elif w in ("isn't", "aren't"):
            self.pos += 1
            return True
        elif w in ("is", "are") and self.count_context and (w1 == "not" or self.relation_at(self.pos + 1)):
            self.pos += 1  # "how many cups are left of the plate"
        return False

    def relation_at(self, i: int) -> tuple[tuple[str, ...], str] | None:
        for phrase, rel in _RELATIONS.get(self.words[i] if i < len(self.words) else "", ()):
            if self.at(phrase, i):
                return phrase, rel
        return None

    def position_at(self, i: int) -> tuple[tuple[str, ...], str] | None:
        """"on the left" and friends, but not when "of" follows (then it is the relation "on the left of")."""
        for phrase, how in _POSITIONS.get(self.words[i] if i < len(self.words) else "", ()):
            if self.at(phrase, i) and (self.words[i + len(phrase):i + len(phrase) + 1] != ["of"]):
                return phrase, how
        return None

    def relation(self, subject: Node) -> Relation:
        phrase, rel = self.relation_at(self.pos)
        at = self.pos
        words = " ".join(phrase)
        if self.level >= MAX_DEPTH:
            self.fail(at, f"relations nest at most {MAX_DEPTH} deep; {words!r} would be relation "
                          f"{self.level + 1} in a chain")
        self.pos += len(phrase)
        if self.peek() in _QUANTITY_WORDS or (self.peek() or "").isdigit():
            self._no_object()
        if not self._object_can_start():
            form = "between <object> and <object>" if rel == "between" else f"{words} <object>"
            self.fail(at, f"{words!r} needs an object after it, e.g. 'the cup {form.replace('<object>', 'the plate')}'",
                      suggestion=form)
        self.level += 1
        try:
            anchor = self.expr()
            anchor2 = None
            if rel == "between":
                if self.peek() != "and" or not self._object_can_start(1):
                    self.fail(at, "'between' needs two objects: 'between <object> and <object>'",
                              suggestion="between <object> and <object>")
                self.pos += 1
                anchor2 = self.expr()
        finally:
            self.level -= 1
        return Relation(rel, subject, anchor, anchor2)

    def _object_can_start(self, k: int = 0) -> bool:
        w = self.peek(k)
        return w is not None and (w not in V.STOP_WORDS or w in V.DETERMINERS) and not self.relation_at(self.pos + k)

    # --- errors ----------------------------------------------------------------------------------------------

    def unexpected(self, i: int, problem: str) -> None:
        """Raise at the word that could not be placed, suggesting the nearest keyword phrase.

        A typo of a relation word is usually swallowed into the object name first ("the cup lefft of ..." reads
        "cup lefft" as the object), so the last word of a multi-word name is tried as the start too.
        """
        starts = [i]
        for a, b in self.kind_spans:
            if b == i and b - a >= 2:
                starts.insert(0, i - 1)
        best = None
        for s in starts:
            for n in (1, 2, 3):
                if s + n > len(self.words):
                    break
                phrase = " ".join(self.words[s:s + n])
                match = _close(phrase, _KEYWORDS)
                if match:
                    score = difflib.SequenceMatcher(None, phrase, match).ratio()
                    if best is None or score > best[0]:
                        best = (score, s, phrase, match)
        if i >= len(self.toks):
            self.fail(None, problem)
        if best is None or best[0] < _UNPLACED_CUTOFF:
            self.fail(i, f"could not place {self.toks[i].raw!r}: {problem}")
        _, s, phrase, match = best
        self.fail(s, f"could not place {self.toks[s].raw!r}: {problem}", match, did_you_mean(phrase, _KEYWORDS))


def _noun(words: list[str], colour: str | None) -> NounPhrase:
    """Singularise the head word: the last one, or the one before "of" ("bags of chips" -> "bag of chips")."""
    h = words.index("of") - 1 if "of" in words else len(words) - 1
    singular, plural = singularize(words[h])
    kind = " ".join([*words[:h], singular, *words[h + 1:]])
    return NounPhrase(kind=kind, colour=colour, plural=plural)


@functools.lru_cache(maxsize=4096)
def _modifier_typo(word: str) -> str | None:
    # Cached: difflib dominates parse time otherwise, and the same object words come back command after command.
    match = difflib.get_close_matches(word, _MODIFIERS, n=1, cutoff=_MODIFIER_TYPO_CUTOFF)
    return match[0] if match else None


@functools.lru_cache(maxsize=4096)
def _near_relation_word(word: str) -> bool:
    return bool(difflib.get_close_matches(word, _RELATION_HEADS, n=1, cutoff=_RELATION_TYPO_CUTOFF))


def _close(word: str, choices) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=_SUGGEST_CUTOFF)
    return match[0] if match else None


__all__ = ["CommandSyntaxError", "Token", "is_teach", "parse", "singularize"]
