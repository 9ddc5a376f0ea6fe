"""Image decoding, perceptual hashes, image corpora and the image encoders (no index needed)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gif_core.errors import ConfigError, InputError
from gif_core.images import MAX_PIXELS, ImageError, decode_image, is_svg

# -- bad and unusual files ---------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width × height but whose data is one tiny row: a bomb header."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1), (0, 0, 0))))
    # IHDR chunk: length (4) + "IHDR" (4) at offset 8, then width, height, ...; CRC after 13 bytes
    struct.pack_into(">II", data, 16, width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    struct.pack_into(">I", data, 29, crc)
    return bytes(data)


@pytest.mark.parametrize("side,reason", [(20000, "too_large"), (10000, "too_large")])
def test_header_bomb_is_refused_before_decoding(tmp_path, side, reason):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header_size(side, side))
    with pytest.raises(ImageError) as err:
        decode_image(path)
    assert err.value.reason == reason
    assert f"{MAX_PIXELS:,}" in str(err.value) and "bomb.png" in str(err.value)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    full = png_bytes(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError) as err:
        decode_image(path)
    assert err.value.reason == "damaged"
    assert "truncated" in str(err.value)


def test_zero_byte_and_not_an_image_and_missing(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        decode_image(empty)
    assert err.value.reason == "empty"
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not a picture\n")
    with pytest.raises(ImageError) as err:
        decode_image(text)
    assert err.value.reason == "not_an_image" and "notes.png" in str(err.value)
    with pytest.raises(ImageError) as err:
        decode_image(tmp_path / "nope.png")
    assert err.value.reason == "unreadable" and "no such file" in str(err.value)
    with pytest.raises(ImageError) as err:
        decode_image(tmp_path)
    assert err.value.reason == "unreadable"
    assert isinstance(err.value, InputError)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    # pure cyan ink: C=255, M=Y=K=0
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(path, format="JPEG", quality=95)
    out = decode_image(path)
    assert out.image.mode == "RGB" and out.format == "JPEG"
    r, g, b = out.image.getpixel((16, 16))
    assert r < 40 and g > 215 and b > 215


def test_sixteen_bit_png_is_rescaled(tmp_path):
    a = np.tile(np.linspace(1000, 61000, 64).astype(np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)  # uint16 -> mode I;16
    out = decode_image(path)
    px = np.asarray(out.image)
    assert out.image.mode == "RGB"
    assert px[0, 0, 0] == 0 and px[0, -1, 0] == 255
    assert np.all(np.diff(px[0, :, 0].astype(int)) >= 0)  # the ramp survives


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "turned.jpg"
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(path)
    assert out.image.size == (20, 40)
    assert out.image.getpixel((10, 2))[2] > 200  # the blue strip is now at the top


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_image(path)
    r, g, b = out.image.getpixel((8, 8))
    assert r > 200 and b < 50


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    out = decode_image(png_bytes(rgba))
    assert out.image.getpixel((4, 4)) == (255, 255, 255)
    assert out.image.getpixel((0, 0)) == (0, 0, 0)
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.info["transparency"] = 1
    out = decode_image(png_bytes(pal))
    assert out.image.getpixel((3, 3)) == (255, 255, 255)
    gray = decode_image(png_bytes(Image.new("LA", (4, 4), (40, 255))))
    assert gray.image.getpixel((1, 1)) == (40, 40, 40)


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
       b'<rect width="40" height="20" fill="#00ff00"/></svg>')


def test_svg_is_rasterised_or_refused(tmp_path, monkeypatch):
    assert is_svg(SVG)
    out = decode_image(SVG)
    assert out.format == "SVG" and out.image.size == (512, 256)
    assert out.image.getpixel((100, 100)) == (0, 255, 0)
    monkeypatch.setitem(__import__("sys").modules, "cairosvg", None)  # as if not installed
    with pytest.raises(ImageError) as err:
        decode_image(SVG, where="logo.svg")
    assert err.value.reason == "svg_unsupported" and "pip install cairosvg" in str(err.value)


def test_large_images_are_shrunk_and_hashed_over_original_bytes():
    raw = png_bytes(Image.new("RGB", (2000, 500), (9, 9, 9)))
    out = decode_image(raw, max_side=256)
    assert out.image.size == (256, 64)
    assert (out.width, out.height) == (2000, 500)
    import hashlib

    assert out.sha256 == hashlib.sha256(raw).hexdigest()


# -- perceptual hashes -------------------------------------------------------------------------


def test_perceptual_index_finds_a_resized_copy(tmp_path):
    from gif_core.perceptual import PerceptualIndex, hamming, image_hashes

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize(
        (128, 128), Image.Resampling.BICUBIC) for _ in range(20)]
    hashes = [image_hashes(im) for im in images]
    index = PerceptualIndex(np.array([h[0] for h in hashes]), np.array([h[1] for h in hashes]))
    index.save(tmp_path / "p")
    index = PerceptualIndex.load(tmp_path / "p")
    ph, dh = image_hashes(images[7].resize((60, 60)))
    sims, rows = index.search(ph, dh, 5)
    assert rows[0] == 7 and sims[0] > 0.85
    assert hamming(np.array([0b1011], dtype=np.uint64), np.uint64(0b0001))[0] == 2


# -- corpora -----------------------------------------------------------------------------------


def test_image_folder_with_captions_and_an_orphan_caption(tmp_path):
    from gif_core.image_data import image_folder, is_image_corpus, read_image_corpus

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a dark square\n")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8), (200, 2, 3)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "lonely.txt").write_text("caption with no picture")
    assert is_image_corpus(tmp_path)
    corpus = image_folder(tmp_path)
    assert [s.id for s in corpus.sources] == ["a.png", "sub/b.jpg"]
    assert [s.caption for s in corpus.sources] == ["a dark square", ""]
    assert [p["reason"] for p in corpus.problems] == ["caption_without_image"]
    assert "lonely.txt" in corpus.problems[0]["message"]
    assert read_image_corpus(tmp_path, limit=1).sources[0].read()[:4] == b"\x89PNG"


def test_image_table_csv_and_jsonl(tmp_path):
    from gif_core.image_data import is_image_corpus, read_image_corpus

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "t.csv").write_text("image,caption\nx.png,black box\n,missing image\n")
    corpus = read_image_corpus(tmp_path / "t.csv")
    assert [(s.id, s.caption) for s in corpus.sources] == [("x.png", "black box")]
    assert corpus.problems[0]["reason"] == "no_image_path"
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "k1", "image": "x.png",
                                                  "caption": "box"}) + "\n")
    assert is_image_corpus(tmp_path / "t.jsonl")
    assert read_image_corpus(tmp_path / "t.jsonl").sources[0].id == "k1"
    (tmp_path / "plain.jsonl").write_text(json.dumps({"text": "just text"}) + "\n")
    assert not is_image_corpus(tmp_path / "plain.jsonl")


def test_webdataset_shard(tmp_path):
    from gif_core.image_data import read_image_corpus

    shard = tmp_path / "shard-000.tar"
    members = {"0001.png": png_bytes(Image.new("RGB", (8, 8), (5, 5, 5))),
               "0001.txt": b"grey square",
               "0002.jpg": png_bytes(Image.new("RGB", (8, 8), (250, 5, 5))),
               "0002.json": json.dumps({"caption": "red square"}).encode(),
               "0003.txt": b"no picture for me"}
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    corpus = read_image_corpus(shard)
    assert [(s.id, s.caption) for s in corpus.sources] == [("shard-000/0001", "grey square"),
                                                          ("shard-000/0002", "red square")]
    assert corpus.sources[0].read() == members["0001.png"]
    assert [p["reason"] for p in corpus.problems] == ["caption_without_image"]


def test_debian_image_sets_are_listed():
    from gif_core.image_data import FASHION_CLASSES, read_image_corpus

    stamps = read_image_corpus("pkg:stamps")
    assert len(stamps.sources) >= 900
    frog = next(s for s in stamps.sources if s.id == "stamps/animals/amphibians/frog-1")
    assert frog.caption == "A frog."
    fashion = read_image_corpus("pkg:fashion-mnist", limit=3)
    assert [s.caption for s in fashion.sources] == [FASHION_CLASSES[9], FASHION_CLASSES[0],
                                                    FASHION_CLASSES[0]]
    assert decode_image(fashion.sources[0].read()).image.size == (28, 28)


# -- image perturbations -----------------------------------------------------------------------


def test_image_perturbations_are_seeded():
    from gif_core.image_queries import IMAGE_KINDS, perturb_image

    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8))
    for kind in IMAGE_KINDS:
        a, b = perturb_image(img, kind, 7), perturb_image(img, kind, 7)
        assert np.array_equal(np.asarray(a), np.asarray(b)), kind
        assert not np.array_equal(np.asarray(a.resize(img.size)), np.asarray(img)), kind
    assert perturb_image(img, "crop", 1).size[0] < 80
    with pytest.raises(InputError, match="unknown image perturbation"):
        perturb_image(img, "flip", 0)


# -- encoders ----------------------------------------------------------------------------------


def test_shipped_tower_matches_its_recorded_hash_and_card():
    from gif_core.encoders import ASSETS_DIR, TOWER_FILE, TOWER_SHA256, file_sha256, load_tower

    path = ASSETS_DIR / TOWER_FILE
    assert file_sha256(path) == TOWER_SHA256
    card = (ASSETS_DIR / "image_tower.md").read_text()
    assert TOWER_SHA256 in card
    assert path.stat().st_size < 4_000_000
    tower = load_tower(path)
    x = torch.zeros(2, 3, 64, 64)
    assert tower(x).shape == (2, 384)


def test_shipped_tower_reproduces_its_held_out_metric():
    """The card's held-out stamp recall@10, recomputed from the shipped weights (±0.03)."""
    from gif_core.encoders import ASSETS_DIR, ImageEncoder
    from gif_core.image_data import is_held_out, read_image_corpus

    report = json.loads((ASSETS_DIR / "image_tower.json").read_text())
    expected = report["metrics"]["inference_path"]["held_out_stamps"]
    stamps = [s for s in read_image_corpus("pkg:stamps").sources if is_held_out(s.id)]
    assert len(stamps) == expected["n"]
    enc = ImageEncoder()
    img = enc.encode_images([decode_image(s.read()).image for s in stamps])
    txt = enc.encode([s.caption for s in stamps])
    sim = txt @ img.T
    ranks = (sim > np.diag(sim)[:, None]).sum(1)
    assert abs(float((ranks < 10).mean()) - expected["text_to_image_r@10"]) <= 0.03


def test_tower_errors_name_the_fix(tmp_path):
    from gif_core.config import EncoderConfig
    from gif_core.encoders import ImageEncoder, load_tower

    with pytest.raises(ConfigError, match="train_image_tower.py"):
        load_tower(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="open_clip"):
        ImageEncoder(EncoderConfig(name=str(tmp_path / "weights.bin")))


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                          "layers": 2}}


@pytest.fixture()
def tiny_clip_arch(tmp_path):
    import open_clip

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "gif-tiny-test.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    return "gif-tiny-test"


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_open_clip_local_checkpoint_round_trip(tmp_path, tiny_clip_arch, fmt):
    import open_clip
    from safetensors.torch import save_file

    from gif_core.config import EncoderConfig
    from gif_core.encoders import ImageEncoder

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_arch, pretrained=None).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    enc = ImageEncoder(EncoderConfig(name=f"open_clip:{tiny_clip_arch}", pretrained=str(path),
                                     device="cpu"))
    assert enc.dim == 32
    img = Image.new("RGB", (50, 40), (10, 120, 200))
    got = enc.encode_images([img])
    with torch.no_grad():
        _, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_arch)
        want = torch.nn.functional.normalize(model.encode_image(preprocess(img)[None]), dim=-1)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    t = enc.encode(["a blue picture"])
    assert t.shape == (1, 32) and abs(np.linalg.norm(t) - 1) < 1e-5


def test_open_clip_refuses_missing_weights_and_wrong_checkpoints(tmp_path, tiny_clip_arch):
    from safetensors.torch import save_file

    from gif_core.config import EncoderConfig
    from gif_core.encoders import ImageEncoder

    with pytest.raises(ConfigError, match="needs weights"):
        ImageEncoder(EncoderConfig(name=f"open_clip:{tiny_clip_arch}"))
    with pytest.raises(ConfigError, match="never downloads"):
        ImageEncoder(EncoderConfig(name="open_clip:ViT-B-32", pretrained="laion2b_s34b_b79k"))
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(ConfigError, match="does not fit"):
        ImageEncoder(EncoderConfig(name=f"open_clip:{tiny_clip_arch}", pretrained=str(bad)))


def test_torch_checkpoints_are_read_without_pickle_code(tmp_path):
    from gif_core.encoders import _checkpoint_state

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ConfigError, match="weights only"):
        _checkpoint_state(Path(path))


def test_svg_too_tall_to_rasterise_is_too_large():
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="100000">'
           b'<rect width="1" height="100000" fill="red"/></svg>')
    with pytest.raises(ImageError, match="too large to rasterise") as info:
        decode_image(svg, where="tall.svg")
    assert info.value.reason == "too_large"
    assert str(info.value).startswith("tall.svg")
