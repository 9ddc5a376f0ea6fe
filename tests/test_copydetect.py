"""Copy verification on real Tux Paint stamps: window-hash proposals, alignment, flat images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gif_core.copydetect import (
    VERIFY_FEATURES,
    WINDOWS,
    CopyStore,
    describe,
    verify_pair,
)
from gif_core.errors import IndexFormatError
from gif_core.fusion import DEFAULT_VERIFY
from gif_core.image_queries import perturb_image
from gif_core.images import decode_image

N_STAMPS = 40


@pytest.fixture(scope="module")
def stamps():
    from gif_core.image_data import stamps_corpus

    sources = stamps_corpus().sources[::20][:N_STAMPS]
    return [(s.id, decode_image(s.read()).image) for s in sources]


@pytest.fixture(scope="module")
def store(stamps, tmp_path_factory):
    d = tmp_path_factory.mktemp("copies") / "copydetect"
    CopyStore.save([describe(im) for _, im in stamps], d)
    return CopyStore.load(d)


def test_store_round_trip_is_memory_mapped(store, stamps):
    assert len(store) == len(stamps)
    assert store.window_phash.shape == (len(stamps), WINDOWS)
    assert isinstance(store.thumbs, np.memmap)
    assert int(store.kp_offsets[-1]) == len(store.kp_desc)
    # the stored thumbnail is the one describe() makes, to the pixel
    d = describe(stamps[3][1])
    h, w = (int(v) for v in store.thumb_hw[3])
    assert (h, w) == d.thumb.shape[:2]
    assert np.array_equal(np.asarray(store.thumbs[3, :h, :w]), d.thumb)


@pytest.mark.parametrize("kind", ["crop", "rotate", "resize", "jpeg", "noise"])
def test_perturbed_copy_verifies_against_its_source_only(store, stamps, kind):
    rows = [4, 11, 23, 37]
    for row in rows:
        q = describe(perturb_image(stamps[row][1], kind, seed=row))
        others = [r for r in range(len(stamps)) if r != row]
        feats = store.verify(q, np.array([row, *others]))
        z = feats @ np.asarray(DEFAULT_VERIFY[:-1]) + DEFAULT_VERIFY[-1]
        assert int(np.argmax(z)) == 0, (kind, stamps[row][0], feats[0], feats[np.argmax(z)])
        assert feats[0, VERIFY_FEATURES.index("zncc")] > 0.8, (kind, feats[0])


def test_crop_is_proposed_by_its_window(store, stamps):
    hits = 0
    for row in range(0, N_STAMPS, 4):
        q = describe(perturb_image(stamps[row][1], "crop", seed=row))
        hits += int(store.propose(q, 3)[0] == row)
    assert hits >= 9, hits


def test_rotation_is_found_by_alignment(stamps):
    src = describe(stamps[7][1])
    q = describe(stamps[7][1].rotate(9, fillcolor=(255, 255, 255)))
    inliers, ratio, zncc, mad, overlap = verify_pair(q, src.kp_xy, src.kp_desc, src.thumb)
    assert inliers >= 10 and zncc > 0.9 and mad < 0.06 and overlap > 0.9


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (200, 30, 30)])
def test_flat_query_has_nothing_to_verify(store, colour):
    q = describe(Image.new("RGB", (300, 200), colour))
    assert q.flat
    feats = store.verify(q, np.arange(5))
    assert (feats[:, VERIFY_FEATURES.index("textured")] == 0).all()
    z = feats @ np.asarray(DEFAULT_VERIFY[:-1]) + DEFAULT_VERIFY[-1]
    assert (z < -5).all()


def test_default_weights_cover_every_feature():
    assert len(DEFAULT_VERIFY) == len(VERIFY_FEATURES) + 1


def test_inconsistent_store_is_refused(stamps, tmp_path):
    d = tmp_path / "copydetect"
    CopyStore.save([describe(im) for _, im in stamps[:3]], d)
    meta = json.loads((d / "copydetect.json").read_text())
    meta["num_images"] = 5
    (d / "copydetect.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="rebuild the index"):
        CopyStore.load(d)


def test_copy_flattened_onto_black_is_matched(stamps, store):
    """Indexed pictures are flattened onto white; a copy of a transparent stamp flattened onto
    black (or another plain colour) is matched through its white-background variant."""
    import io

    from gif_core.image_data import stamps_corpus

    sources = stamps_corpus().sources[::20][:N_STAMPS]
    found, tried = 0, 0
    for row in range(0, N_STAMPS, 4):
        if not str(sources[row].meta["path"]).endswith(".png"):
            continue  # an SVG stamp
        rgba = Image.open(io.BytesIO(sources[row].read())).convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] == 255:
            continue  # no transparency in this stamp
        for colour in ((0, 0, 0), (30, 60, 200)):
            flat = Image.alpha_composite(Image.new("RGBA", rgba.size, colour + (255,)), rgba)
            q = describe(flat.convert("RGB"), variants=True)
            if q.flat:
                continue  # a black glyph on black: nothing is left to see
            feats = store.verify(q, np.arange(len(stamps)))
            z = feats @ np.asarray(DEFAULT_VERIFY[:-1]) + DEFAULT_VERIFY[-1]
            tried += 1
            found += int(np.argmax(z) == row and store.propose(q, 5)[0] == row)
    assert tried >= 10 and found == tried, (found, tried)


def test_white_background_leaves_white_pictures_alone(stamps):
    from gif_core.copydetect import white_background

    assert white_background(stamps[0][1]) is None
    assert describe(stamps[0][1], variants=True).variant is None
