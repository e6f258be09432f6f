"""ClipTokenizer: parity with Hugging Face's CLIPTokenizer and OpenAI's SimpleTokenizer, IO, training, validation."""

from __future__ import annotations

import gzip
import html
import json
import subprocess
import sys
import unicodedata
from importlib import resources

import numpy as np
import pytest

from vlmedge.errors import ArtifactError, ConfigError, InputError
from vlmedge.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")
regex = pytest.importorskip("regex")

TEXTS = [
    "the red cup",
    "",
    "   ",
    "A photo of a DOG.",
    "don't grab it's handle, they're we've I'm you'll he'd",
    "Hello, world!!! (really?) -- yes... #1 @robot $5.99 100% a/b\\c",
    "numbers 0 7 42 2024 3.14159 1,000,000",
    "café naïve résumé Ünïcödé Straße ÉCOLE",
    "e\u0301cole combining accent vs école",  # NFC folds e + U+0301 into é
    "猫が好きです 中文测试 한국어",
    "emoji 🤖🍎 👍🏽 ❤️",
    "tabs\tand\nnewlines\r\n  and   many     spaces",
    "MiXeD CaSe WoRdS",
    "<|startoftext|>literal specials<|endoftext|> in text",
    "quotes “curly” ‘single’ and `back`",
    "pick up the " + "very " * 60 + "long object",  # > 77 tokens
    "x" * 300,
    # whitespace and invisible characters: Python's and Rust's \s agree on these
    "a\x1cb a\x85b a\u00a0b a\u2028b a\u3000b a\u200bb a\x0bb\x0cc a\x00b",
    "ﬁne ﬀ Ⅻ ½ ² İstanbul",  # compatibility characters are kept (NFC, not NFKC)
    "😀" * 40,
    "'S 'T it'S hello‘s",
]


def _bytes_to_unicode():
    """Written out again here (not imported) so the test vocabulary is independent of the code under test."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _openai_merges():
    data = resources.files("vlmedge").joinpath("assets", "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]


class OpenAIReference:
    """OpenAI CLIP's SimpleTokenizer (clip/simple_tokenizer.py), with ftfy.fix_text replaced by NFC.

    ftfy is not installed; on well-formed text its default effect is NFC normalization.
    html.unescape is kept (OpenAI does it, Hugging Face does not).
    """

    def __init__(self):
        merges = _openai_merges()
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = {(a, b) for a, b in zip(word, word[1:])}
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = {(a, b) for a, b in zip(word, word[1:])}
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text):
        text = unicodedata.normalize("NFC", text)  # stands in for ftfy.fix_text
        text = html.unescape(html.unescape(text)).strip()  # basic_clean
        text = regex.sub(r"\s+", " ", text).strip().lower()  # whitespace_clean + lower
        ids = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def tokenize(self, texts, context_length=77, pad=49407):
        out = np.full((len(texts), context_length), pad, dtype=np.int64)
        for i, t in enumerate(texts):
            ids = [49406] + self.encode(t)[: context_length - 2] + [49407]
            out[i, : len(ids)] = ids
        return out


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """vocab.json + merges.txt (+ tokenizer_config.json) built from the shipped gz by the test's own code."""
    d = tmp_path_factory.mktemp("hf_clip")
    merges = _openai_merges()
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    # What openai/clip-vit-base-patch32 ships (its pad is <|endoftext|>).
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 77, "do_lower_case": True}), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def hf_tok(hf_files):
    return transformers.CLIPTokenizer(vocab=str(hf_files / "vocab.json"), merges=str(hf_files / "merges.txt"))


def _hf_ids(tok, texts, max_length=77):
    out = tok(texts, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    return np.array(out, dtype=np.int64)


def test_default_layout():
    tok = ClipTokenizer.default()
    assert ClipTokenizer.default() is tok  # built once
    assert (tok.vocab_size, tok.context_length) == (49408, 77)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    ids = tok.encode(["the red cup"])
    assert ids.dtype == np.int64 and ids.shape == (1, 77)
    # Well-known OpenAI CLIP ids: the=518, red=736, cup=1937.
    assert ids[0, :5].tolist() == [49406, 518, 736, 1937, 49407]
    assert (ids[0, 5:] == 49407).all()


def test_default_matches_hf_clip_tokenizer(hf_tok):
    # In transformers 5 there is no Python ("slow") CLIP tokenizer any more: CLIPTokenizerFast is an
    # alias of CLIPTokenizer (tokenizers backend). We check that, then compare with OpenAI's own
    # algorithm below as the independent second reference.
    assert transformers.CLIPTokenizerFast is transformers.CLIPTokenizer
    ours = ClipTokenizer.default().encode(TEXTS)
    np.testing.assert_array_equal(ours, _hf_ids(hf_tok, TEXTS))


def test_default_matches_openai_simple_tokenizer():
    ref = OpenAIReference()
    ours = ClipTokenizer.default().encode(TEXTS)
    np.testing.assert_array_equal(ours, ref.tokenize(TEXTS))


def test_html_entities_follow_hf_not_openai(hf_tok):
    # Documented deviation: OpenAI html-unescapes ("&amp;" -> "&"), Hugging Face (and we) do not.
    text = ["salt &amp; pepper"]
    ours = ClipTokenizer.default().encode(text)
    np.testing.assert_array_equal(ours, _hf_ids(hf_tok, text))
    assert not np.array_equal(ours, OpenAIReference().tokenize(text))


@pytest.mark.parametrize("text", [
    # OpenAI lowercases before matching "<|endoftext|>"; HF (and we) match specials on the raw text only
    # (added tokens with normalized=False), so the upper-case spelling is ordinary text.
    "<|ENDOFTEXT|> x",
    # Python's str.lower applies the Greek final-sigma rule (ΣΑΣ -> σας); the tokenizers Lowercase
    # normalizer maps character by character (-> σασ).
    "ΣΑΣ",
])
def test_known_openai_differences_follow_hf(hf_tok, text):
    ours = ClipTokenizer.default().encode([text])
    np.testing.assert_array_equal(ours, _hf_ids(hf_tok, [text]))
    assert not np.array_equal(ours, OpenAIReference().tokenize([text]))


def test_truncation_keeps_end_token():
    tok = ClipTokenizer.default()
    row = tok.encode(["go " * 200])[0]
    assert row[0] == tok.bos_token_id and row[-1] == tok.eos_token_id
    assert (row[1:-1] == row[1]).all() and row[1] != tok.eos_token_id  # 75 content tokens, no padding


def test_shorter_context_matches_hf(hf_tok):
    tok = ClipTokenizer.default(context_length=16)
    assert tok.context_length == 16
    np.testing.assert_array_equal(tok.encode(TEXTS), _hf_ids(hf_tok, TEXTS, max_length=16))


def test_from_dir_vocab_merges_matches_hf(hf_files, hf_tok):
    tok = ClipTokenizer.from_dir(hf_files)
    assert (tok.vocab_size, tok.context_length, tok.pad_token_id) == (49408, 77, 49407)
    expected = _hf_ids(hf_tok, TEXTS)
    np.testing.assert_array_equal(tok.encode(TEXTS), expected)
    hf_dir = transformers.CLIPTokenizer.from_pretrained(str(hf_files))
    np.testing.assert_array_equal(_hf_ids(hf_dir, TEXTS), expected)


def test_from_dir_tokenizer_json_from_hf_save_pretrained(tmp_path, hf_tok):
    hf_tok.save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    tok = ClipTokenizer.from_dir(tmp_path)
    np.testing.assert_array_equal(tok.encode(TEXTS), _hf_ids(hf_tok, TEXTS))
    assert tok.pad_token == "<|endoftext|>"


def test_from_dir_uses_pad_token_from_config(hf_files, tmp_path):
    # LAION-style checkpoints pad with "!" (id 0); HF then also treats "!" as a special token.
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_files / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30, "pad_token": "x"}))
    tok = ClipTokenizer.from_dir(tmp_path)
    assert tok.pad_token_id == 0 and tok.context_length == 77  # special_tokens_map wins; 1e30 means "unset"
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    texts = ["the red cup", "hi!!! there", ""]
    np.testing.assert_array_equal(tok.encode(texts), _hf_ids(hf, texts))


def test_from_dir_unknown_special_token(hf_files, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_files / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ArtifactError, match=r"pad_token '<pad>' \(from the tokenizer config\) is not in vocab.json"):
        ClipTokenizer.from_dir(tmp_path)


def test_save_from_file_round_trip(tmp_path):
    tok = ClipTokenizer.default(context_length=32)
    path = tok.save(tmp_path / "bundle")
    assert path == tmp_path / "bundle" / "tokenizer.json"
    back = ClipTokenizer.from_file(path)
    assert back.to_json() == tok.to_json()
    assert (back.context_length, back.vocab_size, back.bos_token_id, back.eos_token_id, back.pad_token_id) == (
        32, 49408, 49406, 49407, 49407)
    np.testing.assert_array_equal(back.encode(TEXTS), tok.encode(TEXTS))
    assert ClipTokenizer.from_dir(tmp_path / "bundle").to_json() == tok.to_json()


CAPTIONS = [f"a photo of a {c} {o} on the {p}" for c in ("red", "green", "blue", "yellow")
            for o in ("cup", "ball", "box", "block") for p in ("table", "floor")]


def test_train_small_vocab(tmp_path):
    tok = ClipTokenizer.train(CAPTIONS, vocab_size=600)
    assert 514 < tok.vocab_size <= 600
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (tok.vocab_size - 2,) + (tok.vocab_size - 1,) * 2
    assert tok.tokenize("A photo of the RED cup") == ["a</w>", "photo</w>", "of</w>", "the</w>", "red</w>", "cup</w>"]
    ids = tok.encode(["the red cup", "unseen words 🤖 ünï"])
    assert ids.shape == (2, 77)
    # every byte symbol is in the vocabulary, so unseen text never maps to the unk (= eos) id
    body = ids[1, 1:np.flatnonzero(ids[1] == tok.eos_token_id)[0]]
    assert len(body) > 5 and (body < 512 + 600).all() and tok.eos_token_id not in body
    assert tok.decode(ids[0]) == "the red cup"
    again = ClipTokenizer.train(CAPTIONS, vocab_size=600)
    assert again.to_json() == tok.to_json()  # deterministic
    back = ClipTokenizer.from_file(tok.save(tmp_path / "t.json"))
    np.testing.assert_array_equal(back.encode(CAPTIONS), tok.encode(CAPTIONS))


def test_train_matches_hf_loading_the_same_files(tmp_path):
    # Our trained tokenizer written as vocab.json + merges.txt is read identically by transformers.
    tok = ClipTokenizer.train(CAPTIONS, vocab_size=560, min_frequency=1)
    model = json.loads(tok.to_json())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]))
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(m if isinstance(m, str) else " ".join(m) for m in model["merges"]) + "\n")
    hf = transformers.CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    texts = CAPTIONS[:5] + ["the purple cup!", "", "zebra 123"]
    np.testing.assert_array_equal(tok.encode(texts), _hf_ids(hf, texts))


def test_decode():
    tok = ClipTokenizer.default()
    assert tok.decode(tok.encode(["Pick up the  RED cup, please!"])[0]) == "pick up the red cup , please !"
    assert tok.decode([]) == ""
    with pytest.raises(InputError, match=r"1-D"):
        tok.decode(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(InputError, match=r"id 50000 at index 1"):
        tok.decode([5, 50000])


def test_encode_validation():
    tok = ClipTokenizer.default()
    with pytest.raises(InputError, match=r"single str 'the red cup'.*wrap it in a list"):
        tok.encode("the red cup")
    with pytest.raises(InputError, match=r"texts\[1\] must be a str, got int"):
        tok.encode(["ok", 3])
    with pytest.raises(InputError, match=r"got dict"):
        tok.encode({"a": 1})
    assert tok.encode([]).shape == (0, 77)


def test_constructor_and_train_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"vocab_size must be an int >= 514.*got 100"):
        ClipTokenizer.train(CAPTIONS, vocab_size=100)
    with pytest.raises(InputError, match=r"texts\[0\]"):
        ClipTokenizer.train([b"bytes"], vocab_size=600)
    with pytest.raises(ConfigError, match=r"context_length must be an int >= 2.*got 1"):
        ClipTokenizer.default(context_length=1)


def test_missing_files_errors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json.*vocab\.json.*merges\.txt.*config\.json") as e:
        ClipTokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ArtifactError, match=r"does not exist"):
        ClipTokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(ArtifactError, match=r"nope\.json does not exist"):
        ClipTokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": 3}')
    with pytest.raises(ArtifactError, match=r"bad\.json: not a valid tokenizers JSON"):
        ClipTokenizer.from_file(bad)
    bad.write_text("not json")
    with pytest.raises(ArtifactError, match=r"bad\.json: cannot read JSON"):
        ClipTokenizer.from_file(bad)


def test_lazy_export_and_torch_free():
    import vlmedge
    assert vlmedge.ClipTokenizer is ClipTokenizer
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "import vlmedge.tokenizer, vlmedge.preprocess\n"
            "print(vlmedge.tokenizer.ClipTokenizer.default().encode(['the red cup'])[0, :5].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[49406, 518, 736, 1937, 49407]"


def test_train_is_deterministic_across_processes(tmp_path):
    # The Rust trainer seeds its hash maps per process: the same texts must still give the same merges.
    code = ("import sys; from vlmedge.scenes.render import all_captions; from vlmedge.tokenizer import ClipTokenizer; "
            "sys.stdout.write(ClipTokenizer.train(all_captions(), 640).to_json())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(3)}
    assert len(outs) == 1
    merges = json.loads(outs.pop())["model"]["merges"]
    assert len(merges) > 20
