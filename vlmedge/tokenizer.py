"""CLIP text tokenizer on the Rust ``tokenizers`` library: no torch, no transformers.

The pipeline is the one Hugging Face's ``CLIPTokenizer`` (transformers 5, a ``tokenizers``
backend; ``CLIPTokenizerFast`` is the same class) uses, so ids match it exactly:

* normalizer: NFC, ``\\s+`` -> one space, lowercase. This is OpenAI's ``whitespace_clean`` +
  lowercasing. OpenAI's ``basic_clean`` additionally runs ``ftfy.fix_text`` (whose default
  effect on clean text is NFC) and ``html.unescape`` twice; Hugging Face without ftfy does
  neither mojibake repair nor HTML unescaping, and neither do we ("&amp;" stays "&amp;").
* pre-tokenizer: OpenAI's regex (specials, contractions, letter runs, single digits,
  punctuation runs; whitespace dropped), then byte-to-unicode mapping.
* model: BPE with the ``</w>`` end-of-word suffix; unknown symbols cannot occur because all
  512 byte symbols (with and without ``</w>``) are in every vocabulary we build.
* post-processor: ``<|startoftext|> ... <|endoftext|>``; truncation keeps the end token.
* padding: to ``context_length`` with the pad token. ``default()`` pads with ``<|endoftext|>``
  (id 49407) like Hugging Face's ``openai/clip-vit-base-patch32`` tokenizer; OpenAI's own
  ``clip.tokenize`` pads with 0. The pad value does not change the text embedding: the
  causal mask hides later positions and pooling reads the first end-of-text position
  (which is also the argmax, as the end token has the largest id in these vocabularies).

Besides HTML entities, two edge cases differ from OpenAI's Python tokenizer (and agree with
Hugging Face): special tokens are matched before lowercasing, so "<|ENDOFTEXT|>" is plain
text; and lowercasing is per character, so a final capital sigma becomes "σ", not "ς".
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from vlmedge.errors import ArtifactError, ConfigError, InputError

log = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
DEFAULT_CONTEXT_LENGTH = 77
_VOCAB_ASSET = "bpe_simple_vocab_16e6.txt.gz"
_N_OPENAI_MERGES = 49152 - 256 - 2  # OpenAI reads merges[1 : 49152 - 256 - 2 + 1]
_PRETOKENIZE = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_MAX_SANE_CONTEXT = 1_000_000  # HF writes model_max_length=1e30 when unset


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2 byte -> printable unicode symbol table (dict order matters: it sets the ids)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's vocabulary layout: 256 byte symbols, the same with ``</w>``, one token per merge, bos, eos.

    A merge whose result already exists (possible for trained merges, never in OpenAI's
    file) adds no new token.
    """
    base = list(bytes_to_unicode().values())
    tokens = base + [b + EOW for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab


def _read_openai_merges(path: os.PathLike | str | None = None) -> list[tuple[str, str]]:
    if path is None:
        data = resources.files("vlmedge").joinpath("assets", _VOCAB_ASSET).read_bytes()
        where = f"vlmedge/assets/{_VOCAB_ASSET}"
    else:
        data, where = Path(path).read_bytes(), str(path)
    try:
        lines = gzip.decompress(data).decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where}: not a gzip-compressed UTF-8 BPE merges file ({e})") from None
    merges = [tuple(line.split()) for line in lines[1:_N_OPENAI_MERGES + 1]]
    if len(merges) != _N_OPENAI_MERGES or any(len(m) != 2 for m in merges):
        raise ArtifactError(f"{where}: expected {_N_OPENAI_MERGES} merge lines of two symbols after the header")
    return merges  # type: ignore[return-value]


def _clip_pipeline(tok: Tokenizer) -> None:
    """Install the CLIP normalizer, pre-tokenizer and decoder (same as Hugging Face's CLIPTokenizer)."""
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()


def _build_clip_bpe(vocab: dict[str, int], merges: Sequence[tuple[str, str]], unk: str = EOS) -> Tokenizer:
    tok = Tokenizer(BPE(vocab=vocab, merges=list(merges), dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix=EOW, fuse_unk=False, unk_token=unk))
    _clip_pipeline(tok)
    return tok


def _token_str(value: Any) -> str | None:
    """A special token from tokenizer_config.json / special_tokens_map.json: a str or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _specials_from_post_processor(pp: dict | None) -> tuple[str | None, str | None]:
    """(bos, eos) token strings from a tokenizer.json post_processor, if it declares them."""
    if not isinstance(pp, dict):
        return None, None
    kind = pp.get("type")
    if kind in ("RobertaProcessing", "BertProcessing"):
        return pp["cls"][0], pp["sep"][0]
    if kind == "TemplateProcessing":
        single = [p.get("SpecialToken", {}).get("id") for p in pp.get("single", [])]
        first, last = single[0] if single else None, single[-1] if single else None
        return first, last
    if kind == "Sequence":
        for sub in pp.get("processors", []):
            found = _specials_from_post_processor(sub)
            if found != (None, None):
                return found
    return None, None


class ClipTokenizer:
    """Text -> int64 token ids ``[N, context_length]`` for CLIP text encoders.

    Build one with :meth:`default`, :meth:`from_dir`, :meth:`from_file` or :meth:`train`.
    The constructor is low level: it takes ownership of a ``tokenizers.Tokenizer`` (normalizer,
    pre-tokenizer, model, specials already set) and configures its truncation and padding.
    Instances are immutable afterwards and ``encode`` is thread-safe.
    """

    def __init__(self, tokenizer: Tokenizer, *, context_length: int = DEFAULT_CONTEXT_LENGTH,
                 pad_token: str = EOS, bos_token: str = BOS, eos_token: str = EOS, source: str = "<memory>"):
        if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
            raise ConfigError(f"context_length must be an int >= 2 (room for bos and eos), got {context_length!r}")
        ids = {}
        for field, token in (("pad_token", pad_token), ("bos_token", bos_token), ("eos_token", eos_token)):
            tid = tokenizer.token_to_id(token)
            if tid is None:
                raise ArtifactError(f"{source}: {field} {token!r} is not in the vocabulary")
            ids[field] = tid
        self._source = source
        self._context_length = context_length
        self._pad, self._bos, self._eos = pad_token, bos_token, eos_token
        self._pad_id, self._bos_id, self._eos_id = ids["pad_token"], ids["bos_token"], ids["eos_token"]
        pp = json.loads(tokenizer.to_str()).get("post_processor")
        if pp is None:  # no start/end template in the file: add CLIP's
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos_token} $A {eos_token}", pair=f"{bos_token} $A {eos_token} $B {eos_token}",
                special_tokens=[(bos_token, self._bos_id), (eos_token, self._eos_id)])
        tokenizer.enable_truncation(max_length=context_length, strategy="longest_first", direction="right")
        tokenizer.enable_padding(direction="right", pad_id=self._pad_id, pad_token=pad_token, length=context_length)
        self._tok = tokenizer
        # Truncation must keep the end token: check the post-processor really adds both ends.
        probe = tokenizer.encode("a " * (context_length + 8)).ids
        if probe[0] != self._bos_id or probe[-1] != self._eos_id:
            raise ArtifactError(f"{source}: the post-processor does not wrap text as {bos_token} ... {eos_token}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls, context_length: int = DEFAULT_CONTEXT_LENGTH) -> "ClipTokenizer":
        """OpenAI CLIP's BPE (vocab 49408) from the shipped merges file; built once per context length."""
        return _default_cached(context_length)

    @classmethod
    def from_openai_bpe(cls, path: os.PathLike | str | None = None,
                        context_length: int = DEFAULT_CONTEXT_LENGTH) -> "ClipTokenizer":
        """Build from an OpenAI ``bpe_simple_vocab_16e6.txt.gz`` file (the shipped one when ``path`` is None)."""
        merges = _read_openai_merges(path)
        tok = _build_clip_bpe(clip_vocab(merges), merges)
        tok.add_special_tokens([BOS, EOS])
        tok.post_processor = processors.RobertaProcessing((EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)),
                                                          trim_offsets=False, add_prefix_space=False)
        return cls(tok, context_length=context_length, source=str(path or _VOCAB_ASSET))

    @classmethod
    def from_file(cls, path: os.PathLike | str, context_length: int | None = None) -> "ClipTokenizer":
        """Load a ``tokenizer.json`` (ours from :meth:`save`, or a Hugging Face one).

        Context length, pad, bos and eos come from the file's truncation, padding and
        post-processor settings; missing ones default to 77 / ``<|endoftext|>`` / the CLIP specials.
        """
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"tokenizer file {path} does not exist")
        return cls._from_json(path, context_length=context_length)

    @classmethod
    def from_dir(cls, path: os.PathLike | str, context_length: int | None = None) -> "ClipTokenizer":
        """Load a Hugging Face tokenizer directory.

        Uses ``tokenizer.json`` if present, else ``vocab.json`` + ``merges.txt`` (with the CLIP
        pipeline). ``tokenizer_config.json`` and ``special_tokens_map.json`` (which wins, as in
        Hugging Face) give pad/bos/eos tokens and ``model_max_length``.
        """
        d = Path(path)
        if not d.is_dir():
            raise ArtifactError(f"tokenizer directory {d} does not exist or is not a directory")
        cfg: dict = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (d / name).is_file():
                cfg.update({k: v for k, v in _read_json(d / name).items() if v is not None})
        specials = {k: _token_str(cfg.get(k)) for k in ("pad_token", "bos_token", "eos_token", "unk_token")}
        if context_length is None:
            mml = cfg.get("model_max_length")
            if isinstance(mml, (int, float)) and 2 <= mml < _MAX_SANE_CONTEXT:
                context_length = int(mml)
        if (d / "tokenizer.json").is_file():
            return cls._from_json(d / "tokenizer.json", context_length=context_length, overrides=specials)
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            vocab = _read_json(d / "vocab.json")
            merges = _read_merges_txt(d / "merges.txt")
            tok = _build_clip_bpe(vocab, merges, unk=specials["unk_token"] or EOS)
            bos, eos = specials["bos_token"] or BOS, specials["eos_token"] or EOS
            pad = specials["pad_token"] or eos
            for name, t in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)):
                if t not in vocab:
                    raise ArtifactError(f"{d}: {name} {t!r} (from the tokenizer config) is not in vocab.json")
            tok.add_special_tokens([bos, eos, pad])  # matched before normalization, as Hugging Face does
            tok.post_processor = processors.RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)),
                                                              trim_offsets=False, add_prefix_space=False)
            return cls(tok, context_length=context_length or DEFAULT_CONTEXT_LENGTH,
                       pad_token=pad, bos_token=bos, eos_token=eos, source=str(d))
        present = sorted(p.name for p in d.iterdir())[:20]
        raise ArtifactError(f"{d}: no tokenizer found; looked for 'tokenizer.json', or 'vocab.json' + 'merges.txt' "
                            f"(directory holds: {present})")

    @classmethod
    def _from_json(cls, path: Path, context_length: int | None, overrides: dict | None = None) -> "ClipTokenizer":
        data = _read_json(path)
        try:
            tok = Tokenizer.from_str(json.dumps(data))
        except Exception as e:  # tokenizers raises plain Exception on a bad schema
            raise ArtifactError(f"{path}: not a valid tokenizers JSON file ({e})") from None
        overrides = overrides or {}
        pp_bos, pp_eos = _specials_from_post_processor(data.get("post_processor"))
        bos = overrides.get("bos_token") or pp_bos or BOS
        eos = overrides.get("eos_token") or pp_eos or EOS
        padding = data.get("padding") or {}
        pad = overrides.get("pad_token") or padding.get("pad_token") or eos
        if context_length is None:
            trunc = data.get("truncation") or {}
            context_length = trunc.get("max_length") or DEFAULT_CONTEXT_LENGTH
        return cls(tok, context_length=context_length, pad_token=pad, bos_token=bos, eos_token=eos, source=str(path))

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int, *, min_frequency: int = 2,
              context_length: int = DEFAULT_CONTEXT_LENGTH) -> "ClipTokenizer":
        """Train a small CLIP-style BPE on ``texts`` with the ``tokenizers`` BpeTrainer.

        The vocabulary has OpenAI's layout: 512 byte symbols (with/without ``</w>``), then one
        token per learned merge, then ``<|startoftext|>``, ``<|endoftext|>`` (pad). So
        ``vocab_size`` must be >= 514; the result has at most ``vocab_size`` tokens (fewer when
        the corpus runs out of pairs seen ``min_frequency`` times).

        Deterministic across processes: BpeTrainer breaks ties between equally frequent pairs by
        symbol id, and gives symbols it meets while walking its (randomly seeded) word hash map
        ids in that walk's order. Handing it all 512 byte symbols as special tokens first pins
        every starting symbol's id, so the merges are the same in every run.
        """
        _check_texts(texts)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 514:
            raise ConfigError(f"vocab_size must be an int >= 514 (512 byte symbols + bos + eos), got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ConfigError(f"min_frequency must be a positive int, got {min_frequency!r}")
        if not texts:
            raise InputError("train() needs at least one text, got an empty list")
        scratch = Tokenizer(BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix=EOW))
        _clip_pipeline(scratch)
        pinned = list(clip_vocab([]))  # 256 bytes, 256 bytes + </w>, bos, eos: ids fixed before training
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=pinned,
                                      show_progress=False, continuing_subword_prefix="", end_of_word_suffix=EOW)
        scratch.train_from_iterator(list(texts), trainer)
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in json.loads(scratch.to_str())["model"]["merges"]]
        tok = _build_clip_bpe(clip_vocab(merges), merges)
        tok.add_special_tokens([BOS, EOS])
        tok.post_processor = processors.RobertaProcessing((EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)),
                                                          trim_offsets=False, add_prefix_space=False)
        log.info("trained CLIP BPE on %d texts: %d merges, vocab %d", len(texts), len(merges),
                 tok.get_vocab_size(with_added_tokens=True))
        return cls(tok, context_length=context_length, source="<trained>")

    # ------------------------------------------------------------------ use
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids int64 ``[len(texts), context_length]``: bos, tokens (truncated), eos, pad..."""
        _check_texts(texts)
        if not texts:
            return np.zeros((0, self._context_length), dtype=np.int64)
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
        return np.array([e.ids for e in encs], dtype=np.int64)

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens of one text as ``encode`` keeps them, without specials or padding (for debugging)."""
        _check_texts([text])
        enc = self._tok.encode(text, add_special_tokens=False)
        return [t for t, m in zip(enc.tokens, enc.attention_mask) if m][: self._context_length - 2]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of one id sequence; specials and padding are dropped, ``</w>`` becomes a space."""
        arr = np.asarray(ids)
        if arr.size == 0 and arr.ndim == 1:
            return ""
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"decode() expects a 1-D sequence of ints, got shape {arr.shape} dtype {arr.dtype}")
        n = self.vocab_size
        bad = np.flatnonzero((arr < 0) | (arr >= n))
        if bad.size:
            raise InputError(f"decode(): id {int(arr[bad[0]])} at index {int(bad[0])} is outside [0, {n})")
        specials = {self._bos_id, self._eos_id, self._pad_id}
        kept = [int(i) for i in arr if int(i) not in specials]
        return self._tok.decode(kept, skip_special_tokens=True).replace(EOW, " ").strip()

    def save(self, path: os.PathLike | str) -> Path:
        """Write ``tokenizer.json`` (truncation/padding/post-processor hold context length and specials).

        ``path`` is a ``.json`` file path or a directory (created if needed). Returns the file written.
        ``ClipTokenizer.from_file(tok.save(p))`` reproduces ``tok`` exactly.
        """
        p = Path(path)
        if p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / "tokenizer.json"
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, p)
        return p

    def to_json(self) -> str:
        """The ``tokenizer.json`` text :meth:`save` writes."""
        return self._tok.to_str()

    # ------------------------------------------------------------------ properties
    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (the text encoder's embedding rows must be >= this)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int:
        return self._bos_id

    @property
    def eos_token_id(self) -> int:
        return self._eos_id

    @property
    def pad_token_id(self) -> int:
        return self._pad_id

    @property
    def bos_token(self) -> str:
        return self._bos

    @property
    def eos_token(self) -> str:
        return self._eos

    @property
    def pad_token(self) -> str:
        return self._pad

    def __repr__(self) -> str:
        return (f"ClipTokenizer(source={self._source!r}, vocab_size={self.vocab_size}, "
                f"context_length={self._context_length}, pad={self._pad!r})")


@functools.lru_cache(maxsize=4)
def _default_cached(context_length: int) -> ClipTokenizer:
    return ClipTokenizer.from_openai_bpe(None, context_length=context_length)


def _read_merges_txt(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read merges ({e})") from None
    merges = []
    for i, line in enumerate(lines):
        if not line or (i == 0 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ArtifactError(f"{path}:{i + 1}: expected two space-separated symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _check_texts(texts: Any) -> None:
    if isinstance(texts, (str, bytes)):
        raise InputError(f"expected a list of strings, got a single {type(texts).__name__} {texts[:40]!r}; "
                         f"wrap it in a list: [{texts[:40]!r}]")
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"expected a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] must be a str, got {type(t).__name__} {t!r:.40}")


__all__ = ["ClipTokenizer", "bytes_to_unicode", "clip_vocab", "BOS", "EOS", "DEFAULT_CONTEXT_LENGTH"]
