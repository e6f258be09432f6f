"""Grounder on a tiny random bundle: real ONNX Runtime sessions, real export, real tokenizer."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundles import tiny_bundle  # noqa: E402

from vlmedge.errors import ArtifactError, ConfigError, InputError  # noqa: E402
from vlmedge.runtime.grounding.encoders import BundleEncoders  # noqa: E402
from vlmedge.runtime.grounding.grounder import Grounder  # noqa: E402
from vlmedge.preprocess import crop_box  # noqa: E402
from vlmedge.scenes.render import render_scene  # noqa: E402

BACKGROUND = ("background", "a table", "a wall", "the floor")
VOCAB = ("the red cup", "a blue ball", "the green bottle") + BACKGROUND


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture(scope="module")
def vocab_bundle():
    return tiny_bundle(vocab=VOCAB)


@pytest.fixture(scope="module")
def frame():
    return render_scene(0).frame  # 480x640 BGR


class CountingEncoders(BundleEncoders):
    """Counts real text-encoder runs."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.text_calls = []

    def encode_text(self, texts):
        self.text_calls.append(list(texts))
        return super().encode_text(texts)


def test_shapes_maps_and_crop(bundle, frame):
    g = Grounder(bundle)
    res = g.ground(frame, ["the red cup", "a blue ball"])
    m = g.manifest
    assert res.queries == ("the red cup", "a blue ball")
    assert res.patch_maps.shape == (2, *m.patch_grid) == (2, 8, 8)
    assert res.frame_size == (480, 640)
    x0, y0, x1, y1 = res.crop_box  # shortest-crop: about the centre square of the 640x480 frame
    assert res.crop_box == tuple(round(v) for v in crop_box(frame.shape, m.preprocess))
    assert abs(x0 - 80) < 8 and abs(x1 - 560) < 8 and (y0, y1) == (0, 480)
    maps = res.maps
    assert maps.shape == (2, 480, 640) and maps.dtype == np.float32
    assert np.all(maps[:, :, :x0] == 0) and np.all(maps[:, :, x1:] == 0) and maps[:, :, x0:x1].max() > 0
    assert np.all(res.patch_maps >= 0) and np.all(res.patch_maps.sum(axis=0) <= 1 + 1e-5)
    assert res.image_embed.shape == (m.embed_dim,)
    assert abs(np.linalg.norm(res.image_embed) - 1) < 1e-4
    assert set(res.timings) >= {"preprocess", "encode", "ground", "total"}
    for q in res.queries:
        ts = res.targets_for(q)
        assert ts and [t.score for t in ts] == sorted((t.score for t in ts), reverse=True)
        for t in ts:
            if t.found:
                x0, y0, x1, y1 = t.bbox
                assert res.crop_box[0] <= x0 < x1 <= res.crop_box[2] and 0 <= y0 < y1 <= 480
                assert t.track_id is not None
            else:
                assert t.bbox is None and len(ts) == 1


def test_text_cache_counts_encoder_calls(bundle, frame):
    enc = CountingEncoders(bundle)
    g = Grounder(enc)
    assert enc.text_calls == [list(BACKGROUND)]  # background prompts: once, at start
    g.ground(frame, ["the red cup", "a blue ball"])
    g.ground(frame, ["the red cup", "a blue ball"])
    g.ground(frame, ["a blue ball"])
    assert len(enc.text_calls) == 2 and enc.text_calls[1] == ["the red cup", "a blue ball"]
    g.ground(frame, ["a blue ball", "the green bottle", "a wall"])  # one new query -> one call
    assert len(enc.text_calls) == 3 and enc.text_calls[2] == ["the green bottle"]
    assert g.text_encoder_calls == 3


def test_vocabulary_npz_is_used_without_text_encoder(vocab_bundle, frame):
    enc = CountingEncoders(vocab_bundle)
    g = Grounder(enc)
    res = g.ground(frame, ["the red cup", "the green bottle"])
    assert enc.text_calls == [] and g.text_encoder_calls == 0
    assert res.patch_maps.shape == (2, 8, 8)
    # the stored embeddings are the text encoder's
    fresh = BundleEncoders(vocab_bundle).encode_text(["the red cup"])[0]
    assert float(fresh @ g.text_embeddings(["the red cup"])[0]) > 0.9999
    g.ground(frame, ["the pink ball"])  # outside the vocabulary: falls back to the encoder once
    assert enc.text_calls == [["the pink ball"]]


def test_probe_embeddings_land_where_the_patch_is(bundle, frame):
    """Queries whose embedding IS a patch's embedding must be found at that patch's frame location."""
    g = Grounder(bundle, background_prompts=(), smoothing=False)
    _, patches, box, _ = g.encode_frame(frame)
    g.register_embedding("probe a", patches[1, 1])
    g.register_embedding("probe b", patches[6, 5])
    res = g.ground(frame, ["probe a", "probe b"])
    assert res.patch_maps[0, 1, 1] > 0.5 and res.patch_maps[1, 6, 5] > 0.5
    x0, _, x1, _ = box
    sx, sy = (x1 - x0) / 8, 480 / 8  # the crop box over the 8x8 grid

    def centre(i, j):
        return x0 + (j + 0.5) * sx, (i + 0.5) * sy

    def covering(query, i, j):
        x, y = centre(i, j)
        return [t for t in res.targets_for(query)
                if t.found and t.bbox[0] <= x < t.bbox[2] and t.bbox[1] <= y < t.bbox[3]]

    for k, (query, (i, j)) in enumerate((("probe a", (1, 1)), ("probe b", (6, 5)))):
        (t,) = covering(query, i, j)[:1]
        x, y = centre(i, j)
        m = res.map_for(query)
        assert m[int(y), int(x)] == pytest.approx(res.patch_maps[k, i, j], abs=0.02)  # geometry of the upsampling
        assert t.score >= res.patch_maps[k, i, j] - 1e-6  # score = best patch of the region
        assert m[int(round(t.peak[1])), int(round(t.peak[0]))] >= m[int(y), int(x)] - 0.02


def test_high_threshold_means_not_found_and_no_box(bundle, frame):
    g = Grounder(bundle, threshold=1.0)
    res = g.ground(frame, ["the red cup"])
    (t,) = res.targets
    assert not t.found and t.bbox is None and t.track_id is None and 0 <= t.score <= 1
    res = g.ground(frame, ["the red cup"], thresholds={"the red cup": 0.0})
    assert res.best().found


def test_tracking_gives_stable_ids_on_a_still_frame(bundle, frame):
    g = Grounder(bundle, threshold=0.3)
    a = g.ground(frame, ["the red cup", "a blue ball"])
    b = g.ground(frame, ["the red cup", "a blue ball"])
    assert [t.track_id for t in a.targets] == [t.track_id for t in b.targets]
    assert [t.bbox for t in a.targets] == [t.bbox for t in b.targets]


def test_classify_sorted_probabilities(bundle, frame):
    g = Grounder(bundle)
    labels = ["cup", "ball", "plate"]
    c = g.classify(frame, labels)
    assert sorted(c.labels) == sorted(labels) and c.probs == tuple(sorted(c.probs, reverse=True))
    assert sum(c.probs) == pytest.approx(1.0, abs=1e-5)
    img, _, _, _ = g.encode_frame(frame)
    txt = g.encoders.encode_text([f"a photo of {lab}" for lab in labels])
    logits = g.logit_scale * (txt @ img)
    ref = np.exp(logits - logits.max())
    ref /= ref.sum()
    assert c.top == (labels[int(np.argmax(ref))], pytest.approx(float(ref.max()), abs=1e-4))
    with pytest.raises(ConfigError, match=r"\{\}"):
        g.classify(frame, labels, prompt="a photo")


def test_errors_name_the_problem(bundle, frame, tmp_path):
    g = Grounder(bundle)
    with pytest.raises(InputError, match="BGR uint8"):
        g.ground(frame.astype(np.float32), ["cup"])
    with pytest.raises(InputError, match="duplicates"):
        g.ground(frame, ["cup", "cup"])
    with pytest.raises(InputError, match="list of strings"):
        g.ground(frame, "the red cup")
    with pytest.raises(ConfigError, match="threshold"):
        Grounder(g.encoders, threshold=2.0)
    with pytest.raises(ArtifactError):
        Grounder(tmp_path / "no-such-bundle")
    res = g.ground(frame, [])  # no queries: nothing to find, still a valid result
    assert res.targets == () and res.maps.shape == (0, 480, 640) and res.best() is None
