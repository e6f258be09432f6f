"""Ground language queries in camera frames with a bundle's patch embeddings. Torch-free.

    g = Grounder("bundles/tabletop-int8")
    res = g.ground(frame_bgr, ["the red cup"])
    res.best().bbox, res.maps.shape   # (x0, y0, x1, y1), [Q, H, W]

``ground`` is three stages, each returning a small frozen value, for a pipeline to run apart
(preprocess the next frame in another thread while this one is encoded and matched):

    prepared = g.prepare(frame_bgr)          # Prepared: model input pixels, crop box
    encoded = g.encode(prepared)             # Encoded: image and patch embeddings
    res = g.match(encoded, ["the red cup"])  # GroundingResult: maps, regions, tracks

A query is a command in the language of ``vlmedge.language``: a noun phrase ("the red cup"), a relation
("the cup next to the plate"), an ordinal ("the second bottle from the left"), a quantity ("all cups",
"how many balls"), a negation ("the cup that is not red"), nested to depth 2, or a taught name
(:meth:`Grounder.teach`). Every noun phrase of every command is grounded the same way (``commands.py``
composes the instances): per patch, the phrase is scored against the bundle's background prompts alone,
``softmax(logit_scale * cos(patch, [phrase, backgrounds...]))`` (``competition=True``: all phrases in one
softmax, as before); its map is thresholded into regions (``regions.py``), and the resolved targets are
tracked and smoothed across calls (``tracking.py``). A target's ``score`` is the same probability with the
logits scaled by the calibration temperature (``score_temperature``), so it ranks detections without
saturating at 1.0. Everything (preprocessing, logit scale, background prompts, threshold, min area) comes
from the bundle manifest unless overridden here.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vlmedge.errors import ConfigError, InputError
from vlmedge.language import Negated, Quantity, Relation, Select
from vlmedge.runtime.grounding.classify import zero_shot
from vlmedge.runtime.grounding.commands import CommandParser, Plan, resolve_command
from vlmedge.runtime.grounding.regions import find_regions
from vlmedge.runtime.grounding.results import Classification, CommandResult, GroundingResult
from vlmedge.runtime.grounding.taught import TaughtObjects, exemplar_from
from vlmedge.runtime.grounding.tracking import Tracker
from vlmedge.similarity import contrastive_maps, l2_normalize, patch_similarity, probs_against
from vlmedge.validation import (
    API_RULES,
    MAX_QUERIES,
    MAX_QUERY_CHARS,
    QueryRules,
    check_positive,
    check_queries,
    check_query,
    check_threshold,
)

log = logging.getLogger(__name__)

# Calibration temperature of target scores when the bundle states none: the one fitted by minimum log-loss on
# the demo model's validation scenes (seeds 900_000+, never trained on nor evaluated) by
# benchmarks/calibrate_scores.py; its results file in benchmarks/results/ holds the fit, AUROC and saturation.
DEFAULT_SCORE_TEMPERATURE = 0.4
# Text embeddings kept for texts outside the bundle's vocabulary (least recently used dropped first): a control
# client may send any number of distinct commands over a run, each entry costs about 4 * embed_dim bytes.
DEFAULT_TEXT_CACHE_SIZE = 1024


def check_frame(frame_bgr) -> np.ndarray:
    """Validate a frame: uint8 [H, W, 3] BGR (BGRA and grayscale are accepted too, as preprocess does)."""
    ok = isinstance(frame_bgr, np.ndarray) and frame_bgr.dtype == np.uint8 and (
        (frame_bgr.ndim == 3 and frame_bgr.shape[2] in (1, 3, 4)) or frame_bgr.ndim == 2) and 0 not in frame_bgr.shape
    if not ok:
        got = f"{frame_bgr.dtype} {frame_bgr.shape}" if isinstance(frame_bgr, np.ndarray) else type(frame_bgr).__name__
        raise InputError(f"frame must be a BGR uint8 [H, W, 3] numpy array, got {got}")
    return frame_bgr


def _checked(queries, thresholds, rules: QueryRules) -> tuple[tuple[str, ...], dict[str, float]]:
    """Validated queries and per-query threshold overrides: a mapping query -> threshold (a subset of the
    queries) or a sequence with one threshold per query, in order."""
    queries = check_queries(queries, error=InputError, rules=rules)
    if thresholds is None:
        return queries, {}
    if isinstance(thresholds, Mapping):
        unknown = [q for q in thresholds if q not in queries]
        if unknown:
            raise InputError(f"thresholds: {_short(unknown[0])} is not one of the queries {list(queries)}")
        items = list(thresholds.items())
    else:
        seq = list(thresholds) if isinstance(thresholds, (Sequence, np.ndarray)) and not isinstance(
            thresholds, (str, bytes)) else None
        if seq is None:
            raise InputError(f"thresholds must be a mapping query -> threshold or a list with one threshold per "
                             f"query, got {type(thresholds).__name__}")
        if len(seq) != len(queries):
            raise InputError(f"thresholds has {len(seq)} entries but there are {len(queries)} queries; give one "
                             "per query, in order, or a mapping query -> threshold")
        items = list(zip(queries, seq))
    return queries, {q: check_threshold(v, f"thresholds[{q!r}]") for q, v in items}


def _short(value) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _counts_instances(command) -> bool:
    """Whether a command counts or orders instances ("how many", "all", "two", plurals, "the second ... from
    the left", "the leftmost"): its instances must pass the count floor."""
    return command.kind in ("plural", "count") or isinstance(command.root, Select)


def _splits_instances(command) -> bool:
    """Whether a command's regions are split into object instances on the frame: when it counts or orders them,
    where touching objects of one description must come out one by one, and when it negates a colour ("the cup
    that is not red"), where a red cup touching a white one made one region that the red cup's match removed
    whole (model v5, 400 validation layouts: negation 91.25% -> 94.25%). Relations keep whole regions: on
    held-out layouts the splitter's rare false cuts cost them more than touching subjects gain (model v3); a
    plain noun phrase keeps its regions whole, and its speed."""
    return _counts_instances(command) or _negates(command.root)


def _keeps_best_alike(command) -> bool:
    """Whether a command's instances must score within ``instance_score_margin`` of the best of their phrase: every
    composed command but a negation ("the cup that is not red" grounds "the cup" through its colour variants,
    whose instances score unalike by design; on validation layouts the margin cost negations 5.5 points and
    gained relations 0.5, unsatisfiable commands 1, counting 5)."""
    return not command.is_plain and not _negates(command.root)


@dataclass(frozen=True)
class _Rules:
    """What a command asks of its phrases' regions; fixed by its parse, so made once per plan, not per frame."""

    count_floor: bool  # _counts_instances
    split: bool  # _splits_instances
    alike: bool  # _keeps_best_alike

    @classmethod
    def of(cls, command) -> _Rules:
        return cls(_counts_instances(command), _splits_instances(command), _keeps_best_alike(command))


def _negates(node) -> bool:
    if isinstance(node, Negated):
        return True
    if isinstance(node, Relation):
        return any(_negates(n) for n in (node.subject, node.anchor, node.anchor2) if n is not None)
    return isinstance(node, (Select, Quantity)) and _negates(node.of)


def _patch_area(encoded) -> float:
    """Frame pixels one patch covers: a command's instances must be at least this big (see commands.py)."""
    x0, y0, x1, y1 = encoded.crop_box
    h, w = encoded.patches.shape[:2]
    return (x1 - x0) * (y1 - y0) / float(h * w)


def _open_encoders(bundle, providers, spinning: bool = False):
    from vlmedge.runtime.grounding.encoders import BundleEncoders

    if isinstance(bundle, BundleEncoders):
        return bundle
    if not isinstance(bundle, (str, Path)):
        raise ConfigError(f"bundle must be a bundle directory path or a BundleEncoders, got {type(bundle).__name__}")
    return BundleEncoders(bundle, providers=providers, spinning=spinning)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A frame preprocessed for the image encoder (``Grounder.prepare``)."""

    pixels: np.ndarray  # float32 [1, 3, H, W]
    crop_box: tuple[int, int, int, int]  # frame region the pixels cover
    frame_size: tuple[int, int]  # (height, width) of the frame
    preprocess_ms: float
    frame: np.ndarray | None = None  # the frame itself (a reference): commands split regions into instances on it


@dataclass(frozen=True, eq=False)
class Encoded:
    """A frame through the image encoder (``Grounder.encode``), ready to match against any queries."""

    image_embed: np.ndarray  # float32 [D], L2-normalized
    patches: np.ndarray  # float32 [h, w, D]
    crop_box: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    preprocess_ms: float
    encode_ms: float
    frame: np.ndarray | None = None  # the frame (a reference), see Prepared.frame


class Grounder:
    """Language grounding on frames: ``ground(frame_bgr, queries) -> GroundingResult``, or its stages
    ``prepare -> encode -> match`` (see the module docstring).

    Args:
        bundle: bundle directory or an open ``BundleEncoders``.
        providers: ONNX Runtime execution providers (default: the encoders' choice).
        threshold: probability a patch must exceed (default: manifest ``grounding.threshold``).
        background_prompts: texts every query competes with (default: manifest ``grounding``).
        min_area_patches: smallest region in patches (default: manifest ``grounding``).
        smoothing: track targets across calls (stable ids, EMA on boxes; a ``Tracker`` to tune it);
            False = each call independent.
        spinning: ONNX Runtime workers spin-wait during a run (``BundleEncoders``). Off by default: under
            CPU contention spinning slowed the encoder 2.6x vs 1.4x (benchmarks/contention.py).
        competition: score all noun phrases in one softmax (they compete for patches) instead of each
            against the background prompts alone.
        score_temperature: calibration temperature of target scores (default: manifest
            ``grounding.score_temperature``, else ``DEFAULT_SCORE_TEMPERATURE``).
        expand_colours: colours a noun phrase without one is also grounded as (its map is the largest of
            "the cup", "the red cup", "the blue cup"...): for a model that only read coloured captions
            (default: manifest ``grounding.expand_colours``, else none).
        split_instances: split the regions of a composed command's noun phrases into object instances on the
            frame's pixels (touching objects of one description count as several); plain phrases never are.
        count_min_score: the score an instance needs to be counted or ordered ("how many", "all", "two",
            "the leftmost"), where one look-alike that barely passes the threshold changes the answer (default:
            manifest ``grounding.count_min_score``, else none).
        instance_score_margin: how far below the best instance of its phrase an instance may score and still be
            counted, ordered or related (composed commands but negations; default: manifest
            ``grounding.instance_score_margin``, else any).
        taught: a JSON file of taught objects, loaded when it exists and rewritten on every
            ``teach``/``forget`` (so a restart keeps them); None keeps them in memory only.
        text_cache_size: text embeddings kept for texts outside the bundle's vocabulary, least recently
            used dropped first (the vocabulary, the background prompts and registered embeddings are
            always kept).
        max_queries, max_query_chars: the most queries in one call and the longest query; the control
            socket of ``vlmedge run`` has the same limits (default 16 and 200).
    """

    def __init__(self, bundle, *, providers: Sequence[str] | None = None, threshold: float | None = None,
                 background_prompts: Sequence[str] | None = None, min_area_patches: int | None = None,
                 smoothing: bool | Tracker = True, spinning: bool = False, competition: bool = False,
                 score_temperature: float | None = None, taught: str | Path | None = None,
                 expand_colours: Sequence[str] | None = None, split_instances: bool = True,
                 count_min_score: float | None = None, instance_score_margin: float | None = None,
                 text_cache_size: int = DEFAULT_TEXT_CACHE_SIZE,
                 max_queries: int = MAX_QUERIES, max_query_chars: int = MAX_QUERY_CHARS):
        if not isinstance(text_cache_size, int) or isinstance(text_cache_size, bool) or text_cache_size < 1:
            raise ConfigError(f"text_cache_size must be a positive int, got {text_cache_size!r}")
        self.text_cache_size = text_cache_size
        self.query_rules = API_RULES.limited(max_count=max_queries, max_chars=max_query_chars, where="Grounder",
                                             hint=" (Grounder(max_queries=..., max_query_chars=...) sets it)")
        self.encoders = _open_encoders(bundle, providers, spinning)
        self.manifest = self.encoders.manifest
        g = self.manifest.grounding
        self.threshold = check_threshold(g.threshold if threshold is None else threshold, "threshold")
        self.min_area_patches = int(g.min_area_patches if min_area_patches is None else min_area_patches)
        if self.min_area_patches < 1:
            raise ConfigError(f"min_area_patches must be >= 1, got {min_area_patches!r}")
        bg = g.background_prompts if background_prompts is None else background_prompts
        self.background_prompts = check_queries(bg, "background_prompts", error=ConfigError)
        self.logit_scale = float(self.manifest.logit_scale)
        if isinstance(smoothing, Tracker):
            self.tracker = smoothing
        elif smoothing in (True, False):
            self.tracker = Tracker() if smoothing else None
        else:
            raise ConfigError(f"smoothing must be True, False or a Tracker, got {smoothing!r}")
        floor = getattr(g, "count_min_score", None) if count_min_score is None else count_min_score
        self.count_min_score = check_threshold(0.0 if floor is None else floor, "count_min_score")
        margin = getattr(g, "instance_score_margin", None) if instance_score_margin is None else instance_score_margin
        self.instance_score_margin = None if margin is None else check_threshold(margin, "instance_score_margin")
        if split_instances not in (True, False):
            raise ConfigError(f"split_instances must be True or False, got {split_instances!r}")
        self.split_instances = split_instances
        if competition not in (True, False):
            raise ConfigError(f"competition must be True or False, got {competition!r}")
        self.competition = competition
        temp = getattr(g, "score_temperature", None) if score_temperature is None else score_temperature
        self.score_temperature = check_positive(DEFAULT_SCORE_TEMPERATURE if temp is None else temp,
                                                "score_temperature", upper=10.0, text=False)
        colours = getattr(g, "expand_colours", ()) if expand_colours is None else expand_colours
        self.expand_colours = check_queries(tuple(colours), "expand_colours", error=ConfigError)
        self.text_encoder_calls = 0  # number of text-encoder runs (each handles a batch of new texts)
        self._pinned: dict[str, np.ndarray] = {}  # vocabulary, background prompts, registered: never dropped
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()  # the rest, least recently used first
        self._load_vocabulary()
        self._bg_embeds = self.text_embeddings(self.background_prompts) if self.background_prompts else None
        for t, e in zip(self.background_prompts, () if self._bg_embeds is None else self._bg_embeds):
            self._pinned[t] = e
            self._text_cache.pop(t, None)
        self._parser = CommandParser()
        self._last_plan: tuple | None = None  # (plan, its texts, embeddings and rows): see _plan_texts
        self._last_rules: tuple | None = None  # (plan, a _Rules per command)
        self.taught = TaughtObjects(self.manifest.model_id, self.manifest.embed_dim, path=taught)

    # ------------------------------------------------------------------ text
    def _load_vocabulary(self) -> None:
        """Seed the text cache with the bundle's precomputed vocabulary (text_embeddings.npz), if any."""
        vocab = self.encoders.text_embeddings()
        if vocab is None:
            return
        queries, embeds = vocab
        for q, e in zip(queries, l2_normalize(embeds)):
            self._pinned[str(q)] = e
        log.info("using %d precomputed text embeddings from %s", len(queries), self.manifest.text_embeddings)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized embeddings [N, D]; texts not cached yet are encoded in one call. The cache keeps the
        ``text_cache_size`` texts used last besides the pinned ones (vocabulary, background prompts)."""
        if not len(texts):
            return np.zeros((0, self.manifest.embed_dim), dtype=np.float32)
        found: dict[str, np.ndarray] = {}
        missing = []
        for t in dict.fromkeys(texts):
            e = self._pinned.get(t)
            if e is None:
                e = self._text_cache.get(t)
                if e is not None:
                    self._text_cache.move_to_end(t)
            if e is None:
                missing.append(t)
            else:
                found[t] = e
        if missing:
            emb = l2_normalize(np.asarray(self.encoders.encode_text(list(missing)), dtype=np.float32))
            self.text_encoder_calls += 1
            for t, e in zip(missing, emb):
                found[t] = self._text_cache[t] = e
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return np.stack([found[t] for t in texts])

    def register_embedding(self, text: str, embed: np.ndarray) -> None:
        """Use ``embed`` [D] for ``text`` from now on (e.g. an embedding of an exemplar image crop)."""
        e = np.asarray(embed, dtype=np.float32).reshape(-1)
        if e.shape != (self.manifest.embed_dim,) or not np.all(np.isfinite(e)) or not np.any(e):
            raise InputError(f"embedding for {text!r} must be a finite non-zero [{self.manifest.embed_dim}] vector, "
                             f"got shape {np.shape(embed)}")
        check_query(text, "text", error=InputError)
        self._pinned[text] = l2_normalize(e)
        self._text_cache.pop(text, None)
        self._last_plan = None  # the embeddings kept for the current queries may include this text

    @property
    def cached_queries(self) -> tuple[str, ...]:
        """Texts whose embeddings are kept: the pinned ones, then the cache, least recently used first."""
        return (*self._pinned, *(t for t in self._text_cache if t not in self._pinned))

    def set_threshold(self, threshold: float) -> None:
        self.threshold = check_threshold(threshold, "threshold")

    # ------------------------------------------------------------------ image
    def prepare(self, frame_bgr: np.ndarray) -> Prepared:
        """Preprocess a frame for the image encoder (may run in another thread than ``encode``/``match``)."""
        from vlmedge.preprocess import crop_box, preprocess

        frame_bgr = check_frame(frame_bgr)
        spec = self.manifest.preprocess
        t0 = time.perf_counter()
        pixels = preprocess(frame_bgr, spec)
        box = tuple(int(round(v)) for v in crop_box(frame_bgr.shape, spec))
        return Prepared(pixels, box, tuple(frame_bgr.shape[:2]), (time.perf_counter() - t0) * 1e3, frame_bgr)

    def encode(self, prepared: Prepared) -> Encoded:
        """Run the image encoder on a frame from :meth:`prepare`."""
        if not isinstance(prepared, Prepared):
            raise InputError(f"prepared must come from Grounder.prepare(), got {type(prepared).__name__}")
        t0 = time.perf_counter()
        image_embeds, patch_embeds = self.encoders.encode_image(prepared.pixels)
        encode_ms = (time.perf_counter() - t0) * 1e3
        return Encoded(l2_normalize(np.asarray(image_embeds, dtype=np.float32)[0]),
                       np.asarray(patch_embeds, dtype=np.float32)[0], prepared.crop_box, prepared.frame_size,
                       prepared.preprocess_ms, encode_ms, prepared.frame)

    # ------------------------------------------------------------------ queries
    def match(self, encoded: Encoded, queries: Sequence[str], *,
              thresholds: Mapping[str, float] | None = None) -> GroundingResult:
        """Find every query in a frame from :meth:`encode`. See the module docstring for the method.

        ``thresholds`` optionally overrides the threshold for some queries (e.g. from the control socket): a
        mapping query -> threshold, or a sequence with one threshold per query.
        """
        if not isinstance(encoded, Encoded):
            raise InputError(f"encoded must come from Grounder.encode(), got {type(encoded).__name__}")
        queries, per_query = _checked(queries, thresholds, self.query_rules)
        return self._match(encoded, queries, per_query)

    def ground(self, frame_bgr: np.ndarray, queries: Sequence[str], *,
               thresholds: Mapping[str, float] | None = None) -> GroundingResult:
        """``match(encode(prepare(frame_bgr)), queries, thresholds=...)`` in one call."""
        queries, per_query = _checked(queries, thresholds, self.query_rules)  # before the encoder runs
        return self._match(self.encode(self.prepare(frame_bgr)), queries, per_query)

    def _match(self, encoded: Encoded, queries: tuple[str, ...], per_query: dict[str, float]) -> GroundingResult:
        t0 = time.perf_counter()
        plan = self._parser.plan(queries, self.taught.names(), self.expand_colours)
        phrases = {p: i for i, p in enumerate(plan.phrases)}  # phrase -> row of its map
        maps, scores = self._phrase_maps(encoded.patches, plan)
        split = self.split_instances and encoded.frame is not None and np.ndim(encoded.frame) == 3
        patch_area = _patch_area(encoded)
        regions: dict[tuple[str, float, bool], list] = {}  # (phrase, threshold, split into instances) -> targets
        commands = []
        for c, own, rules in zip(plan.commands, plan.by_command, self._plan_rules(plan)):
            key_of = {p: (p, per_query.get(c.text, self.threshold), split and rules.split) for p in own}
            for key in key_of.values():
                if key not in regions:
                    k = phrases[key[0]]
                    regions[key] = find_regions(
                        maps[k], key[0], threshold=key[1], min_area_patches=self.min_area_patches,
                        frame_size=encoded.frame_size, crop_box=encoded.crop_box, score_map=scores[k],
                        frame_bgr=encoded.frame if key[2] else None)
            commands.append(resolve_command(c, {p: regions[key] for p, key in key_of.items()}, encoded.frame_size,
                                            patch_area, self.count_min_score if rules.count_floor else 0.0,
                                            self.instance_score_margin if rules.alike else None))
        commands = self._tracked(commands)
        head = [phrases[own[0]] for own in plan.by_command]
        patch_maps = maps[head] if head else np.zeros((0, *encoded.patches.shape[:2]), dtype=np.float32)
        ground_ms = (time.perf_counter() - t0) * 1e3
        # Complete before the result is built: a result is never changed after construction.
        timings = {"preprocess": encoded.preprocess_ms, "encode": encoded.encode_ms, "ground": ground_ms,
                   "total": encoded.preprocess_ms + encoded.encode_ms + ground_ms}
        return GroundingResult(queries=queries, targets=tuple(t for c in commands for t in c.targets),
                               patch_maps=patch_maps, frame_size=encoded.frame_size, crop_box=encoded.crop_box,
                               timings=timings, image_embed=encoded.image_embed, commands=tuple(commands))

    def _plan_rules(self, plan: Plan) -> tuple[_Rules, ...]:
        if self._last_rules is None or self._last_rules[0] is not plan:
            self._last_rules = (plan, tuple(_Rules.of(c) for c in plan.commands))
        return self._last_rules[1]

    def _plan_texts(self, plan: Plan) -> tuple[list[str], np.ndarray, list[list[int]] | None]:
        """The texts a plan grounds, their embeddings and, per phrase, its rows among them (None: one text per
        phrase). Made once per plan and kept until the queries change or a teach/forget."""
        if self._last_plan is not None and self._last_plan[0] is plan:
            return self._last_plan[1]
        groups = [plan.variants.get(p, (p,)) for p in plan.phrases]
        texts = list(dict.fromkeys(t for g in groups for t in g))
        index = {t: i for i, t in enumerate(texts)}
        rows = None if len(texts) == len(groups) else [[index[t] for t in g] for g in groups]
        made = (texts, self.phrase_embeddings(texts), rows)
        self._last_plan = (plan, made)
        return made

    def _phrase_maps(self, patches: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        """Per phrase: the detection map (probability, thresholded into regions) and the score map (the same
        probability at the calibration temperature), both [P, h, w]. A phrase grounded through several texts
        (its coloured variants) takes the largest of their maps."""
        if not plan.phrases:
            empty = np.zeros((0, *patches.shape[:2]), dtype=np.float32)
            return empty, empty
        texts, embeds, rows = self._plan_texts(plan)
        q_sims = patch_similarity(patches, embeds)
        b_sims = patch_similarity(patches, self._bg_embeds) if self._bg_embeds is not None else None
        if self.competition:
            maps = contrastive_maps(patches, embeds, self._bg_embeds, self.logit_scale)
        else:
            maps = probs_against(q_sims, b_sims, self.logit_scale)
        scores = probs_against(q_sims, b_sims, self.logit_scale * self.score_temperature)
        for i, t in enumerate(texts):  # a taught name also competes with its teaching frame's surroundings
            if t in self.taught and len(self.taught.negatives(t)):
                against = patch_similarity(patches, self.taught.negatives(t))
                against = against if b_sims is None else np.concatenate([b_sims, against])
                maps[i] = probs_against(q_sims[i:i + 1], against, self.logit_scale)[0]
                scores[i] = probs_against(q_sims[i:i + 1], against, self.logit_scale * self.score_temperature)[0]
        if rows is None:  # no phrase has variants: the maps are already per phrase
            return maps, scores
        return (np.stack([maps[r].max(axis=0) for r in rows]), np.stack([scores[r].max(axis=0) for r in rows]))

    def phrase_embeddings(self, phrases: Sequence[str]) -> np.ndarray:
        """[P, D]: a taught object's exemplar embedding, else the text embedding of the phrase."""
        texts = [p for p in phrases if p not in self.taught]
        by_text = dict(zip(texts, self.text_embeddings(texts))) if texts else {}
        return np.stack([self.taught.embedding(p) if p in self.taught else by_text[p] for p in phrases])

    def _tracked(self, commands: list[CommandResult]) -> list[CommandResult]:
        if self.tracker is None:
            return commands
        flat = self.tracker.update([t for c in commands for t in c.targets])
        out, k = [], 0
        for c in commands:
            n = len(c.targets)
            out.append(replace(c, targets=tuple(flat[k:k + n])))
            k += n
        return out

    # ------------------------------------------------------------------ taught objects
    def teach(self, name: str, frame_bgr: np.ndarray | None = None, box: Sequence[float] | None = None, *,
              crops: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Teach a new noun: ``teach("my mug", frame, (x0, y0, x1, y1))`` or ``teach("my mug", crops=[img, ...])``
        (1-5 image crops of the object). The exemplar embedding is the mean of the patch embeddings inside
        the box (or of every patch of each crop); ``name`` is then usable anywhere a noun phrase is ("the cup
        next to my mug"). Returns the exemplar [D]."""
        name = check_query(name, "teach: name", error=InputError)
        exemplar, negatives, source = exemplar_from(lambda image: self.encode(self.prepare(image)), frame_bgr, box,
                                                    crops)
        self.taught.add(name, exemplar, source, negatives)
        self._parser = CommandParser()  # parses made before may have read the name as words
        return self.taught.embedding(name)

    def forget(self, name: str) -> None:
        """Forget a taught object (KeyError-like InputError naming the known ones when absent)."""
        self.taught.remove(name)
        self._parser = CommandParser()

    def classify(self, frame_bgr: np.ndarray, labels: Sequence[str], prompt: str = "a photo of {}") -> Classification:
        """Whole-frame zero-shot classification: labels sorted by softmax(logit_scale * cos)."""
        labels = check_queries(labels, "labels", error=InputError)
        if not labels:
            raise InputError("classify needs at least one label")
        encoded = self.encode(self.prepare(frame_bgr))
        return zero_shot(encoded.image_embed, labels, self.text_embeddings, self.logit_scale, prompt)

    def reset_tracks(self) -> None:
        if self.tracker is not None:
            self.tracker.reset()
