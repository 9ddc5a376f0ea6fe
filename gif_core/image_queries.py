"""Planted image queries: perturbed copies of indexed images, seeded and reproducible.

Every perturbation is a pure function ``fn(image, rng) -> image`` of a decoded RGB PIL image and
a ``numpy.random.Generator``; :func:`perturb_image` seeds the generator, so the same (image,
kind, seed) always gives the same picture. They stand for the ways a copied picture reaches a
model's output or the web: cropped, resized, re-encoded, slightly turned, noisy.

Kinds
-----
``exact``   the image unchanged.
``crop``    80–92 % of the width and of the height kept, at a random offset.
``resize``  scaled to 40–70 % of its size (bicubic), then back to the original size.
``jpeg``    re-encoded as JPEG at quality 20–50.
``rotate``  turned by 3–10 degrees either way, corners filled with white.
``noise``   Gaussian noise of σ 6–14 (of 255) on every channel.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError
from .queries import Query

IMAGE_KINDS = ("crop", "resize", "jpeg", "rotate", "noise")
"""Perturbations used for the fusion ranker and the benchmarks (``exact`` is available too)."""


def exact(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.copy()


def crop(image: Image.Image, rng: np.random.Generator, lo: float = 0.80, hi: float = 0.92
         ) -> Image.Image:
    w, h = image.size
    cw = max(1, round(w * rng.uniform(lo, hi)))
    ch = max(1, round(h * rng.uniform(lo, hi)))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return image.crop((x0, y0, x0 + cw, y0 + ch))


def resize(image: Image.Image, rng: np.random.Generator, lo: float = 0.4, hi: float = 0.7
           ) -> Image.Image:
    w, h = image.size
    s = rng.uniform(lo, hi)
    small = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, rng: np.random.Generator, lo: int = 20, hi: int = 50
         ) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(lo, hi + 1)))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def rotate(image: Image.Image, rng: np.random.Generator, lo: float = 3.0, hi: float = 10.0
           ) -> Image.Image:
    angle = rng.uniform(lo, hi) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False,
                        fillcolor=(255, 255, 255))


def noise(image: Image.Image, rng: np.random.Generator, lo: float = 6.0, hi: float = 14.0
          ) -> Image.Image:
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    a = a + rng.normal(0.0, rng.uniform(lo, hi), size=a.shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "RGB")


_KINDS: dict[str, Callable[..., Image.Image]] = {
    "exact": exact, "crop": crop, "resize": resize, "jpeg": jpeg, "rotate": rotate,
    "noise": noise}


def perturb_image(image: Image.Image, kind: str, seed: int) -> Image.Image:
    """Apply perturbation ``kind`` with a generator seeded by ``seed``."""
    fn = _KINDS.get(kind)
    if fn is None:
        raise InputError(f"unknown image perturbation {kind!r}; expected one of "
                         f"{', '.join(_KINDS)}.")
    return fn(image, np.random.default_rng(seed))


def _seed(seed: int, kind: str, i: int) -> int:
    digest = hashlib.sha256(f"{seed}:{kind}:{i}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def generate_image_queries(images: Sequence[tuple[str, Image.Image]], kinds: Sequence[str],
                           out_dir: str | Path, seed: int = 0) -> list[Query]:
    """Write one perturbed copy per (source, kind) as PNG into ``out_dir`` and return the queries.

    Args:
        images: (source id, decoded image) pairs.
        kinds: perturbations from :data:`_KINDS`; each source gets every kind.
        out_dir: folder for the query images (created).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries = []
    for i, (sid, image) in enumerate(images):
        for kind in kinds:
            picture = perturb_image(image, kind, _seed(seed, kind, i))
            path = out / f"{i:05d}-{kind}.png"
            picture.save(path, format="PNG")
            queries.append(Query(qid=f"{kind}-{i}", text=None, image=str(path),
                                 source_ids=[sid], kind=kind))
    return queries
