"""Word tables of the command language. Data only: the parser reads them, nothing else lives here.

Every phrase is lower-case and split into words the way the tokenizer splits a command.
"""

from __future__ import annotations

# Colour adjectives that become the ``colour`` of a noun phrase. A colour word with no noun after it is read
# as the noun itself ("the orange").
COLOURS = (
    "red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "magenta", "cyan", "turquoise", "teal",
    "white", "black", "brown", "beige", "grey", "gray", "silver", "gold", "golden", "navy", "maroon",
)

DETERMINERS = ("the", "a", "an")

# Relation phrases -> relation name. The parser tries the longest phrase first, so "on top of" wins over "on"
# and "to the left of" over nothing ("to" alone is not a relation).
RELATION_PHRASES = {
    "left of": "left_of", "to the left of": "left_of", "on the left of": "left_of",
    "right of": "right_of", "to the right of": "right_of", "on the right of": "right_of",
    "above": "above", "over": "above",
    "below": "below", "under": "below", "underneath": "below", "beneath": "below",
    "on": "on", "on top of": "on", "atop": "on",
    "next to": "next_to", "beside": "next_to", "near": "next_to", "near to": "next_to", "close to": "next_to",
    "by": "next_to",
    "between": "between",
    "nearest to": "nearest", "nearest": "nearest", "closest to": "nearest", "closest": "nearest",
    "farthest from": "farthest", "furthest from": "farthest",
    "in front of": "in_front_of",
    "behind": "behind",
}

# How each relation is written back (describe(), reasons, error hints).
RELATION_WORDS = {
    "left_of": "left of", "right_of": "right of", "above": "above", "below": "below", "on": "on",
    "next_to": "next to", "between": "between", "nearest": "nearest to", "farthest": "farthest from",
    "in_front_of": "in front of", "behind": "behind",
}

# Superlative modifiers -> Select.how.
SUPERLATIVES = {
    "leftmost": "leftmost", "rightmost": "rightmost",
    "topmost": "topmost", "highest": "topmost", "uppermost": "topmost",
    "lowest": "lowest", "bottommost": "lowest", "lowermost": "lowest",
    "largest": "largest", "biggest": "largest",
    "smallest": "smallest", "tiniest": "smallest",
}

# Phrases after the noun that mean the same as a positional superlative ("the cup on the left"). Without them
# "on the left" would silently read as the relation "on" with an object called "left".
POSITION_PHRASES = {
    "on the left": "leftmost", "on the far left": "leftmost",
    "on the right": "rightmost", "on the far right": "rightmost",
    "at the top": "topmost", "at the bottom": "lowest",
}

# The side a positional superlative counts from.
SUPERLATIVE_DIRECTION = {"leftmost": "left", "rightmost": "right", "topmost": "top", "lowest": "bottom"}

ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5,
    "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5,
}
ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth")
# Recognised only to say that ordinals stop at MAX_ORDINAL (digit forms like "7th" are matched by pattern).
ORDINALS_BEYOND = ("sixth", "seventh", "eighth", "ninth", "tenth", "eleventh", "twelfth")
MAX_ORDINAL = 5

DIRECTIONS = ("left", "right", "top", "bottom")

# "two cups" .. "six cups": found only when exactly that many exist.
COUNTS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "both": 2}
MIN_COUNT, MAX_COUNT = 2, 6
# Number words recognised only to reject them with the allowed range.
NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12,
}
SINGULAR_WORDS = ("one", "1")
ALL_WORDS = ("all", "every", "each")
# What may follow "how many X": "how many cups are there?".
COUNT_TRAILERS = ("are there", "is there", "do you see", "can you see", "are visible", "are in view")

# Words that end a multi-word object name. "of" is allowed inside one ("bag of chips") when a plain word follows.
STOP_WORDS = frozenset(DETERMINERS) | frozenset({
    "that", "which", "that's", "and", "or", "from", "is", "are", "isn't", "aren't", "not", "there", "to", "of",
    "with", "in", "at", "for", "how", "many", "all", "every", "each",
})

# Plurals that the suffix rules get wrong, plural -> singular.
IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "dice": "die",
    "knives": "knife", "wives": "wife", "leaves": "leaf", "shelves": "shelf", "halves": "half", "loaves": "loaf",
    "wolves": "wolf", "scarves": "scarf", "calves": "calf",
    "tomatoes": "tomato", "potatoes": "potato", "mangoes": "mango", "heroes": "hero", "echoes": "echo",
    "volcanoes": "volcano",
    "buses": "bus", "lenses": "lens", "gases": "gas", "canvases": "canvas", "atlases": "atlas", "irises": "iris",
    "cacti": "cactus", "cactuses": "cactus", "quizzes": "quiz",
    "cookies": "cookie", "movies": "movie", "brownies": "brownie", "hoodies": "hoodie", "beanies": "beanie",
    "smoothies": "smoothie", "zombies": "zombie", "selfies": "selfie",
}

# Words that look plural but name one object (or have no separate plural); read as singular.
INVARIANT_NOUNS = frozenset({
    "scissors", "pants", "jeans", "shorts", "tongs", "pliers", "tweezers", "headphones", "earphones", "earbuds",
    "binoculars", "sunglasses", "goggles", "series", "species", "sheep", "fish", "deer", "news", "lens", "gas",
    "canvas", "atlas", "chess", "tennis",
})
