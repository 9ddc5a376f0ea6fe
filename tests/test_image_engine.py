"""Image indexes end to end on a real slice: Tux Paint stamps and Fashion-MNIST photos.

One index is built per session from a folder holding ~70 captioned stamps, 16 Fashion-MNIST
photos and a handful of broken files; the tests query it with perturbed copies, captions and bad
input.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gif_core.errors import InputError
from gif_core.images import ImageError, decode_image

STAMP_STEP = 14
FASHION = 16
BROKEN = {"empty.png": "empty", "half.png": "damaged", "notes.png": "not_an_image",
          "bomb.png": "too_large"}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A folder like a user's: images with captions beside them, and some broken files."""
    from gif_core.image_data import fashion_mnist_corpus, stamps_corpus
    from tests.test_images import png_with_header_size

    root = tmp_path_factory.mktemp("imgs") / "pictures"
    root.mkdir()
    stamps = stamps_corpus().sources[::STAMP_STEP]
    for src in stamps:
        path = Path(src.meta["path"])
        name = src.id.replace("/", "__")
        shutil.copyfile(path, root / f"{name}{path.suffix}")
        (root / f"{name}.txt").write_text(src.caption + "\n")
    for src in fashion_mnist_corpus(FASHION).sources:
        name = src.id.replace("/", "__")
        (root / f"{name}.png").write_bytes(src.read())
        (root / f"{name}.txt").write_text(src.caption)
    good = (root / f"{stamps[0].id.replace('/', '__')}.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "half.png").write_bytes(good[: len(good) // 3])
    (root / "notes.png").write_text("a text file with the wrong name\n")
    (root / "bomb.png").write_bytes(png_with_header_size(20000, 20000))
    (root / "orphan.txt").write_text("a caption whose picture is missing")
    return root, stamps


@pytest.fixture(scope="session")
def image_encoder(encoder):
    from gif_core.encoders import ImageEncoder

    return ImageEncoder(text_encoder=encoder)


@pytest.fixture(scope="session")
def image_index(tmp_path_factory, image_folder, image_encoder):
    from gif_core.config import BuildConfig, ProbeConfig
    from gif_core.engine import build_images
    from gif_core.image_data import read_image_corpus

    root, _ = image_folder
    out = tmp_path_factory.mktemp("imgidx") / "pictures"
    manifest = build_images(read_image_corpus(root), out,
                            BuildConfig(probe=ProbeConfig(lbfgs_steps=100), ranker_queries=90),
                            encoder=image_encoder, corpus_name=str(root))
    return out, manifest


@pytest.fixture(scope="session")
def image_engine(image_index, image_encoder):
    from gif_core.engine import Engine

    return Engine.load(image_index[0], encoder=image_encoder)


def test_build_reports_every_skipped_item(image_index, image_folder):
    _, manifest = image_index
    _, stamps = image_folder
    im = manifest["images"]
    assert manifest["modality"] == "image"
    assert im["indexed"] == len(stamps) + FASHION == manifest["counts"]["samples"]
    assert im["captioned"] == im["indexed"]
    assert im["skipped_reasons"] == {"caption_without_image": 1, "empty": 1, "damaged": 1,
                                     "not_an_image": 1, "too_large": 1}
    items = {s["item"]: s["reason"] for s in im["skipped_items"]}
    for name, reason in BROKEN.items():
        assert items[name] == reason
    assert items["orphan.txt"] == "caption_without_image"
    assert manifest["encoder"]["name"] == "gif-image-tower"
    assert manifest["ranker"]["fitted"] and manifest["ranker_text"]["fitted"]


CROP_MISSES_ALLOWED = 0
"""Crops were the hardest kind for the small default tower alone; the window-hash proposals and
copy verification (gif_core.copydetect) now find every crop of this slice first."""


@pytest.mark.parametrize("kind", ["crop", "resize", "jpeg", "rotate", "noise"])
def test_perturbed_copy_is_found_at_rank_1(image_engine, image_folder, kind):
    from gif_core.image_queries import perturb_image

    _, stamps = image_folder
    ids = image_engine.samples.ids
    picked = stamps[1::6][:10]
    ranks = []
    for i, src in enumerate(picked):
        image = decode_image(src.read()).image
        att = image_engine.attribute_image(perturb_image(image, kind, seed=100 + i), k=5,
                                           influence=False)
        expected = src.id.replace("/", "__") + Path(src.meta["path"]).suffix
        assert expected in ids
        found = [r.id for r in att.results]
        ranks.append(found.index(expected) + 1 if expected in found else None)
    allowed = CROP_MISSES_ALLOWED if kind == "crop" else 0
    assert sum(r == 1 for r in ranks) >= len(picked) - allowed, (kind, ranks)
    assert all(r is not None and r <= 3 for r in ranks), (kind, ranks)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (40, 90, 200)])
def test_blank_picture_is_not_attributed(image_engine, colour):
    """A single-colour picture matches every margin of every drawing; there is nothing to
    verify, so no source may be claimed."""
    att = image_engine.attribute_image(Image.new("RGB", (256, 256), colour), k=3,
                                       influence=False)
    assert att.abstained and att.confidence < 0.5, (colour, att.confidence)


def test_verified_copies_are_attributed_with_confidence(image_engine, image_folder):
    from gif_core.image_queries import perturb_image

    _, stamps = image_folder
    confident = 0
    for i, src in enumerate(stamps[3::5][:8]):
        image = decode_image(src.read()).image
        att = image_engine.attribute_image(perturb_image(image, "jpeg", seed=i), k=3,
                                           influence=False)
        assert att.results[0].id.startswith(src.id.replace("/", "__"))
        assert "verify" in att.timings_ms
        confident += int(not att.abstained)
    assert confident >= 7, confident


def test_fashion_photo_copy_found(image_engine, image_folder):
    from gif_core.image_data import fashion_mnist_corpus
    from gif_core.image_queries import perturb_image

    src = fashion_mnist_corpus(FASHION).sources[5]
    image = decode_image(src.read()).image.resize((112, 112))
    att = image_engine.attribute_image(perturb_image(image, "noise", 3), k=3)
    assert att.results[0].id == "fashion-mnist__5.png"
    assert "phash" in att.results[0].channels
    assert att.results[0].verbatim > 0.7  # perceptual-hash similarity


def test_text_finds_a_captioned_stamp(image_engine, image_folder):
    _, stamps = image_folder
    hits = 0
    picked = stamps[2::7][:8]
    for src in picked:
        att = image_engine.attribute(src.caption, k=5, influence=False)
        expected = src.id.replace("/", "__") + Path(src.meta["path"]).suffix
        hits += expected in [r.id for r in att.results]
        assert att.results[0].snippet  # the caption is shown
    assert hits == len(picked)


def test_attribution_keeps_the_schema(image_engine, image_folder):
    from gif_core.evidence import schema_errors

    root, stamps = image_folder
    path = root / (stamps[0].id.replace("/", "__") + Path(stamps[0].meta["path"]).suffix)
    att = image_engine.attribute_image(path, k=3)
    assert schema_errors(att.to_dict()) == []
    import hashlib

    assert att.query_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert att.results[0].sha256 == att.query_sha256
    assert att.results[0].influence is not None
    assert set(att.timings_ms) >= {"encode", "ann", "phash", "rank", "influence", "total"}


def test_bad_query_images_are_refused(image_engine, tmp_path):
    with pytest.raises(ImageError) as err:
        image_engine.attribute_image(b"")
    assert err.value.reason == "empty"
    with pytest.raises(ImageError) as err:
        image_engine.attribute_image(tmp_path / "missing.png")
    assert err.value.reason == "unreadable"
    with pytest.raises(InputError, match="bytes, a path or a PIL image"):
        image_engine.attribute_image(12)


def test_image_query_on_a_text_index_is_refused(engine):
    with pytest.raises(InputError, match="an image index"):
        engine.attribute_image(Image.new("RGB", (8, 8)))


def test_all_images_broken_is_a_clear_error(tmp_path, image_encoder):
    from gif_core.engine import build_images
    from gif_core.image_data import read_image_corpus

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_text("no")
    with pytest.raises(InputError, match="0 usable sample"):
        build_images(read_image_corpus(tmp_path), tmp_path / "out", encoder=image_encoder)
    assert not (tmp_path / "out").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gif_core.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)


def test_cli_image_and_text_queries(image_index, image_folder, tmp_path):
    out, _ = image_index
    root, stamps = image_folder
    first = stamps[0].id.replace("/", "__") + Path(stamps[0].meta["path"]).suffix
    image_path = root / first
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join([
        json.dumps({"qid": "img", "image": str(image_path)}),
        json.dumps({"qid": "txt", "text": stamps[0].caption}),
        json.dumps({"qid": "broken", "image": str(root / "half.png")}),
    ]) + "\n")
    res = run_cli("query", str(out), "--queries", str(queries), "--json", "-k", "3",
                  "--no-influence")
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert res.returncode == 1  # one line failed; the others ran
    by = {x["qid"]: x for x in lines}
    assert by["img"]["results"][0]["id"] == first
    assert first in [r["id"] for r in by["txt"]["results"]]
    assert "truncated" in by["broken"]["error"]
    res = run_cli("info", str(out))
    assert "image samples" in res.stdout and "5 skipped" in res.stdout
    before = (out / "manifest.json").read_bytes()
    res = run_cli("add", str(out), str(root))
    assert res.returncode == 2 and "holds images; `gif add` appends texts" in res.stderr
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_cli_builds_an_image_folder_by_its_files(tmp_path):
    from gif_core.image_data import fashion_mnist_corpus

    folder = tmp_path / "photos"
    folder.mkdir()
    for src in fashion_mnist_corpus(12).sources:
        (folder / f"{src.id.split('/')[1]}.png").write_bytes(src.read())
    (folder / "zero.png").write_bytes(b"")
    res = run_cli("build", str(folder), "--out", str(tmp_path / "idx"), "--clusters", "2",
                  "--ranker-queries", "0", "-q")
    assert res.returncode == 0, res.stderr
    assert "12 indexed (0 with a caption), 1 skipped (empty 1" in res.stdout
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["modality"] == "image" and not (tmp_path / "idx" / "lexical").exists()
    res = run_cli("query", str(tmp_path / "idx"), "--image", str(folder / "3.png"), "--json")
    assert json.loads(res.stdout)["results"][0]["id"] == "3.png"
    assert np.isfinite(json.loads(res.stdout)["confidence"])
    res = run_cli("query", str(tmp_path / "idx"), "--image", str(folder / "zero.png"))
    assert res.returncode == 2 and "empty file" in res.stderr
