"""Perceptual-hash channel of image indexes: the near-duplicate evidence, as shingles are for text.

Every image gets two 64-bit hashes from ``imagehash``: pHash (signs of the low 8×8 DCT
coefficients of a 32×32 grayscale copy: robust to resizing, re-encoding, noise and light
changes) and dHash (signs of horizontal gradients of a 9×8 copy: cheap, robust to the same,
different failure cases). The distance between two images is the sum of both Hamming distances,
0..128; unrelated images sit near 64. A search scans all hashes (a popcount per row; 1 M rows
take a few milliseconds) and proposes the ``k`` nearest within :data:`MAX_DISTANCE`.

Files: ``phash.npy`` and ``dhash.npy`` (N,) uint64, ``perceptual.json`` (format, version, N).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import IndexFormatError
from .store import read_component_meta

FORMAT = "gif-perceptual"
FORMAT_VERSION = 1
_META = "perceptual.json"
_FILES = ("phash.npy", "dhash.npy")
HASH_BITS = 128
"""Bits compared per pair (pHash + dHash)."""
MAX_DISTANCE = 40
"""Candidates farther than this (of 128 bits) are not proposed: random pairs of clip-art differ
in about 50–70 bits, perturbed copies (resize, JPEG, noise) in under 20."""


def _pack(bits: np.ndarray) -> np.uint64:
    return np.packbits(bits.astype(np.uint8).ravel()).view(">u8")[0].astype(np.uint64)


def image_hashes(image) -> tuple[np.uint64, np.uint64]:
    """(pHash, dHash) of a decoded RGB PIL image, each packed into a uint64."""
    import imagehash

    return _pack(imagehash.phash(image).hash), _pack(imagehash.dhash(image).hash)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def hamming(a: np.ndarray, b: np.uint64) -> np.ndarray:
    """Hamming distances between each uint64 in ``a`` and ``b``."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.uint64(b))
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int32)
    return _POPCOUNT8[x.reshape(-1, 1).view(np.uint8)].sum(axis=1).astype(np.int32)


class PerceptualIndex:
    """pHash + dHash of every indexed image; rows are index positions."""

    def __init__(self, phash: np.ndarray, dhash: np.ndarray):
        if phash.shape != dhash.shape:
            raise IndexFormatError(f"perceptual hashes disagree: {phash.shape} pHash rows, "
                                   f"{dhash.shape} dHash rows. Rebuild the index.")
        self.phash = phash
        self.dhash = dhash

    def __len__(self) -> int:
        return len(self.phash)

    def save(self, directory: Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "phash.npy", np.asarray(self.phash, dtype=np.uint64))
        np.save(d / "dhash.npy", np.asarray(self.dhash, dtype=np.uint64))
        (d / _META).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                           "num_images": len(self)}), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> PerceptualIndex:
        d = Path(directory)
        meta = read_component_meta(d, _META, FORMAT, FORMAT_VERSION, _FILES, "perceptual")
        ph = np.load(d / "phash.npy", allow_pickle=False)
        dh = np.load(d / "dhash.npy", allow_pickle=False)
        if len(ph) != int(meta["num_images"]):
            raise IndexFormatError(f"perceptual index at {d} has {len(ph)} hashes, its metadata "
                                   f"says {meta['num_images']}; rebuild the index.")
        return cls(ph, dh)

    def distances(self, ph: np.uint64, dh: np.uint64, rows: np.ndarray | None = None
                  ) -> np.ndarray:
        """Summed Hamming distance (0..128) to every row, or to ``rows``."""
        a = self.phash if rows is None else self.phash[rows]
        b = self.dhash if rows is None else self.dhash[rows]
        return hamming(a, ph) + hamming(b, dh)

    def search(self, ph: np.uint64, dh: np.uint64, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows within :data:`MAX_DISTANCE`: (similarities, rows), nearest
        first; similarity = 1 - distance / 128."""
        dist = self.distances(ph, dh)
        near = np.flatnonzero(dist <= MAX_DISTANCE)
        if len(near) > k:
            near = near[np.argpartition(dist[near], k - 1)[:k]]
        near = near[np.lexsort((near, dist[near]))]
        return 1.0 - dist[near] / HASH_BITS, near

    def similarity_rows(self, ph: np.uint64, dh: np.uint64, rows: np.ndarray) -> np.ndarray:
        return 1.0 - self.distances(ph, dh, np.asarray(rows, dtype=np.int64)) / HASH_BITS
