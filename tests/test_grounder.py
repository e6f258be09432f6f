"""Grounder on a tiny random bundle: real ONNX Runtime sessions, real export, real tokenizer."""


import numpy as np
import pytest

from vlmedge.errors import ArtifactError, ConfigError, InputError  # noqa: E402
from vlmedge.preprocess import crop_box  # noqa: E402
from vlmedge.runtime.grounding.encoders import BundleEncoders  # noqa: E402
from vlmedge.runtime.grounding.grounder import Grounder  # noqa: E402
from vlmedge.scenes.render import render_scene  # noqa: E402

from _bundles import tiny_bundle  # noqa: E402

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
    # each query is scored against the backgrounds alone: every map is a probability, not a share
    assert np.all(res.patch_maps >= 0) and np.all(res.patch_maps <= 1)
    joint = Grounder(bundle, competition=True).ground(frame, ["the red cup", "a blue ball"])
    assert np.all(joint.patch_maps.sum(axis=0) <= 1 + 1e-5)  # the old joint softmax, kept as an option
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
    encoded = g.encode(g.prepare(frame))
    patches, box = encoded.patches, encoded.crop_box
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
    img = g.encode(g.prepare(frame)).image_embed
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


QUERIES = ["the red cup", "a blue ball", "the green bottle"]


def _same(a, b):
    """Two results equal in every value except the wall-clock timings."""
    assert a.queries == b.queries and a.targets == b.targets
    assert a.frame_size == b.frame_size and a.crop_box == b.crop_box
    assert a.patch_maps.dtype == b.patch_maps.dtype == np.float32
    assert np.array_equal(a.patch_maps, b.patch_maps) and np.array_equal(a.image_embed, b.image_embed)
    assert {k: v for k, v in a.to_dict().items() if k != "timings"} == \
        {k: v for k, v in b.to_dict().items() if k != "timings"}


@pytest.mark.parametrize("smoothing", [False, True])
def test_ground_is_match_of_encode_of_prepare(bundle, frame, smoothing):
    enc = BundleEncoders(bundle)
    staged, whole = Grounder(enc, smoothing=smoothing), Grounder(enc, smoothing=smoothing)  # trackers apart
    for thresholds in (None, {"a blue ball": 0.05}):
        prepared = staged.prepare(frame)
        encoded = staged.encode(prepared)
        res = staged.match(encoded, QUERIES, thresholds=thresholds)
        _same(res, whole.ground(frame, QUERIES, thresholds=thresholds))
        assert (encoded.crop_box, encoded.frame_size) == (prepared.crop_box, prepared.frame_size) == \
            (res.crop_box, res.frame_size)
    # one encoding serves any queries
    _same(staged.match(encoded, ["a yellow box"]), whole.ground(frame, ["a yellow box"]))


def test_stages_accept_only_their_own_inputs(bundle, frame):
    g = Grounder(bundle)
    prepared = g.prepare(frame)
    encoded = g.encode(prepared)
    for wrong in (prepared, frame, (encoded.image_embed, encoded.patches, encoded.crop_box, {}), None):
        with pytest.raises(InputError, match=r"encoded must come from Grounder.encode\(\), got "):
            g.match(wrong, QUERIES)
    for wrong in (frame, encoded, None):
        with pytest.raises(InputError, match=r"prepared must come from Grounder.prepare\(\), got "):
            g.encode(wrong)
    with pytest.raises(InputError, match="duplicates"):
        g.match(encoded, ["cup", "cup"])
    with pytest.raises(TypeError):
        g.ground(frame, QUERIES, prepared=prepared)  # one way in per stage: ground takes the frame
    assert not any(hasattr(g, old) for old in ("encode_frame", "ground_encoded"))  # one name per stage


def test_timings_are_complete_when_the_result_is_built(bundle, frame, monkeypatch):
    import vlmedge.runtime.grounding.grounder as grounder_module
    from vlmedge.runtime.grounding.results import GroundingResult

    built = []

    class Recorded(GroundingResult):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(dict(self.timings))  # the timings as constructed

    monkeypatch.setattr(grounder_module, "GroundingResult", Recorded)
    g = Grounder(bundle)
    res = g.ground(frame, QUERIES)
    encoded = g.encode(g.prepare(frame))
    again = g.match(encoded, QUERIES)
    assert built == [res.timings, again.timings]  # nothing added or changed after construction
    for r in (res, again):
        t = r.timings
        assert list(t) == ["preprocess", "encode", "ground", "total"] and all(type(v) is float for v in t.values())
        assert t["total"] == t["preprocess"] + t["encode"] + t["ground"]
    assert again.timings["encode"] == encoded.encode_ms and again.timings["preprocess"] == encoded.preprocess_ms


def test_maps_are_upsampled_once_on_demand(bundle, frame, monkeypatch):
    import vlmedge.runtime.grounding.results as results_module

    calls = []
    real = results_module.upsample_map

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(results_module, "upsample_map", counting)
    res = Grounder(bundle).ground(frame, QUERIES)
    assert calls == [] and "maps" not in vars(res)
    maps = res.maps
    assert res.maps is maps and res.map_for("a blue ball") is not None and len(calls) == len(QUERIES)
    for i in range(len(QUERIES)):
        assert np.array_equal(maps[i], real(res.patch_maps[i], res.frame_size, res.crop_box))


def test_thresholds_and_queries_are_checked_at_the_api(bundle, frame):
    g = Grounder(bundle)
    with pytest.raises(ConfigError, match=r"threshold must be a number in \[0, 1\], got 2.0"):
        Grounder(g.encoders, threshold=2.0)
    with pytest.raises(ConfigError, match=r"threshold must be a number in \[0, 1\], got True"):
        g.set_threshold(True)
    with pytest.raises(ConfigError, match=r"thresholds\['the red cup'\] must be a number in \[0, 1\], got -0.5"):
        g.ground(frame, QUERIES, thresholds={"the red cup": -0.5})
    with pytest.raises(ConfigError, match="background_prompts has duplicates"):
        Grounder(g.encoders, background_prompts=("a wall", "a wall"))
    with pytest.raises(InputError, match=r"queries\[1\] is empty"):
        g.ground(frame, ["cup", "  "])
    # the Python API keeps a query as given (it is the key of the result); only the wire normalizes
    assert g.ground(frame, ["  the red  cup"]).queries == ("  the red  cup",)


def test_runtime_exports_resolve():
    import vlmedge.runtime as runtime
    from vlmedge.runtime.grounding.grounder import Encoded, Prepared

    for name in runtime.__all__:
        module, attr = runtime._LAZY[name]
        assert getattr(runtime, name).__module__ == module, f"{name}: the table should name where it is defined"
    assert runtime.Prepared is Prepared and runtime.Encoded is Encoded and runtime.Grounder is Grounder
    with pytest.raises(AttributeError, match="no attribute 'encode_frame'"):
        runtime.encode_frame  # noqa: B018
