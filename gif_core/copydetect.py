"""Copy verification for image indexes: crop-tolerant proposals and geometric checks.

Global signatures (the encoder's embedding, pHash) place a perturbed copy *near* its source, but
a crop, a turn or a family of near-identical drawings (the same star with 94 or 97 points, one
button in five colours) leaves several indexed images equally near. Copy detection settles this
the classical way, in two steps:

Proposals
    Every indexed image keeps the pHash/dHash pair (:func:`fast_hashes`, 128 bits) of its whole
    picture and of 18 sub-windows: 90 % and 80 % of each side at a 3 × 3 grid of offsets. A query
    that is a crop of an indexed image keeping roughly 70–100 % of each side lands within a few
    per cent of one of them, where the hashes still agree. :meth:`CopyStore.propose` scans all
    windows (a popcount per window) and proposes the images with the nearest window.

Verification
    For each candidate, ORB keypoints of query and candidate are matched and a similarity
    transform (rotation, scale, shift) is fitted with RANSAC; the candidate's colour thumbnail is
    warped by it (and, as a second hypothesis, simply resized onto the query) and compared with
    the query's thumbnail over their overlap: correlation of the grey levels and mean absolute
    colour difference. A true copy aligns and agrees pixel by pixel; a look-alike does not.
    :meth:`CopyStore.verify` returns these as features (:data:`VERIFY_FEATURES`) that the image
    ranker's second stage weighs (fitted at build time on planted copies, like the first stage).

A query without structure (a blank or single-colour picture) has nothing to align or correlate:
its features say so (``textured`` = 0) and the ranker's second stage does not attribute it.

Files (folder ``copydetect/``): ``window_phash.npy`` / ``window_dhash.npy`` (N, 19) uint64,
``kp_offsets.npy`` (N + 1,) int64, ``kp_xy.npy`` (M, 2) float16 (keypoints in units of the image's
longer side), ``kp_desc.npy`` (M, 32) uint8, ``thumbs.npy`` (N, 64, 64, 3) uint8 (each thumbnail
top-left, its size in ``thumb_hw.npy`` (N, 2) uint8), ``copydetect.json``. All are read
memory-mapped; a query touches the rows of its candidates only. About 21 KB per image.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IndexFormatError
from .perceptual import hamming
from .store import read_component_meta

log = logging.getLogger(__name__)

FORMAT = "gif-copydetect"
FORMAT_VERSION = 1
_META = "copydetect.json"
_FILES = ("window_phash.npy", "window_dhash.npy", "kp_offsets.npy", "kp_xy.npy", "kp_desc.npy",
          "thumbs.npy", "thumb_hw.npy")

WINDOW_SCALES = (0.9, 0.8)
"""Sides of the sub-windows hashed per image, as fractions of the image's sides."""
WINDOW_GRID = 3
"""Offsets per axis of each window size (first, middle, last position)."""
WINDOWS = 1 + len(WINDOW_SCALES) * WINDOW_GRID * WINDOW_GRID
HASH_SIDE = 256
"""Images are reduced to this longer side (grey) before hashing and keypoint detection."""
THUMB = 64
"""Longer side of the stored colour thumbnails."""
MAX_KEYPOINTS = 256
RANSAC_PX = 4.0
"""RANSAC inlier tolerance, in pixels at :data:`HASH_SIDE`."""
FLAT_STD = 3.0
"""A query whose grey levels vary less than this (of 255) is treated as having no structure."""
MIN_OVERLAP = 0.25
"""An alignment that overlaps less than this share of the query is not compared."""

VERIFY_FEATURES = (
    "log_inliers",   # log(1 + RANSAC inliers) / log(1 + MAX_KEYPOINTS)
    "inlier_ratio",  # inliers / the smaller keypoint count of the pair
    "zncc",          # grey-level correlation of query and aligned candidate, -1..1
    "colour_mad",    # mean absolute colour difference over the overlap, 0..1
    "overlap",       # share of the query covered by the aligned candidate
    "textured",      # 1 when the query has structure to verify, else 0
)
SAME_PICTURE_MAD = 1.5
"""Two indexed images whose thumbnails have the same size and differ by less than this many grey
levels on average are the same picture stored twice (another file, size or folder)."""


@dataclass
class CopyDescriptor:
    """What copy detection keeps of one image."""

    window_phash: np.ndarray  # (WINDOWS,) uint64
    window_dhash: np.ndarray  # (WINDOWS,) uint64
    kp_xy: np.ndarray         # (n, 2) float32, units of the longer side
    kp_desc: np.ndarray       # (n, 32) uint8
    thumb: np.ndarray         # (h, w, 3) uint8, longer side THUMB
    flat: bool
    variant: CopyDescriptor | None = None
    """Queries only: the same picture with a uniform, non-white background turned white (see
    :func:`white_background`), matched as well; None when there is no such background."""


_ORB = None
_MATCHER = None


def _cv2():
    import cv2

    # thumbnails are tiny: OpenCV's own thread pool costs more than it saves
    cv2.setNumThreads(1)
    return cv2


def _orb():
    global _ORB
    if _ORB is None:
        _ORB = _cv2().ORB_create(nfeatures=MAX_KEYPOINTS, fastThreshold=10, edgeThreshold=15,
                                 patchSize=15)
    return _ORB


def _matcher():
    global _MATCHER
    if _MATCHER is None:
        _MATCHER = _cv2().BFMatcher(_cv2().NORM_HAMMING, crossCheck=True)
    return _MATCHER


def fast_hashes(grey: np.ndarray) -> tuple[np.uint64, np.uint64]:
    """64-bit pHash (signs of the low 8 × 8 DCT block of a 32 × 32 copy against its median) and
    dHash (horizontal gradient signs of a 9 × 8 copy) of a grey uint8 array."""
    cv2 = _cv2()
    s = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    d = cv2.dct(s)[:8, :8].ravel()
    ph = np.packbits(d > np.median(d)).view(">u8")[0].astype(np.uint64)
    s9 = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    dh = np.packbits((s9[:, 1:] > s9[:, :-1]).ravel()).view(">u8")[0].astype(np.uint64)
    return ph, dh


def _windows(grey: np.ndarray) -> list[np.ndarray]:
    h, w = grey.shape
    out = [grey]
    for s in WINDOW_SCALES:
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        for y in np.linspace(0, h - ch, WINDOW_GRID).round().astype(int):
            for x in np.linspace(0, w - cw, WINDOW_GRID).round().astype(int):
                out.append(grey[y:y + ch, x:x + cw])
    return out


BACKGROUND_SHARE = 0.6
"""A query whose border is mostly (this share) one colour other than white has a background
that may stand in for transparency: indexed images are flattened onto white, a copy may have
been flattened onto black or any other colour."""
BACKGROUND_TOL = 24


def white_background(image):
    """The picture with its uniform border-connected background turned white, or None when its
    border is not one colour or is white already."""
    cv2 = _cv2()
    rgb = np.asarray(image.convert("RGB"))
    if min(rgb.shape[:2]) < 3:
        return None
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    colour = np.median(border, axis=0)
    near = np.abs(border - colour).max(axis=1) <= BACKGROUND_TOL
    if near.mean() < BACKGROUND_SHARE or (255 - colour).max() <= 2 * BACKGROUND_TOL:
        return None
    mask = (np.abs(rgb.astype(np.int16) - colour).max(axis=2) <= BACKGROUND_TOL).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    background = np.isin(labels, edge)
    out = rgb.copy()
    out[background] = 255
    from PIL import Image

    return Image.fromarray(out, "RGB")


def describe(image, *, variants: bool = False) -> CopyDescriptor:
    """The copy-detection descriptor of a decoded RGB PIL image; ``variants`` (queries) adds
    the white-background variant when the picture has a uniform coloured background."""
    cv2 = _cv2()
    rgb = np.asarray(image.convert("RGB"))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    s = HASH_SIDE / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    g = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    hashes = [fast_hashes(win) for win in _windows(g)]
    pad = 16  # white margin, so that corners at the border are found too
    gp = cv2.copyMakeBorder(g, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=255)
    kp, desc = _orb().detectAndCompute(gp, None)
    if desc is None or not kp:
        xy, desc = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    else:
        xy = (np.float32([k.pt for k in kp]) - pad) / HASH_SIDE
    t = THUMB / max(h, w)
    tsize = (max(1, round(w * t)), max(1, round(h * t)))
    thumb = cv2.resize(rgb, tsize, interpolation=cv2.INTER_AREA if t < 1 else cv2.INTER_LINEAR)
    variant = None
    if variants:
        whitened = white_background(image)
        variant = describe(whitened) if whitened is not None else None
    return CopyDescriptor(np.array([p for p, _ in hashes], dtype=np.uint64),
                          np.array([d for _, d in hashes], dtype=np.uint64),
                          xy.astype(np.float32), desc.astype(np.uint8), thumb,
                          flat=float(g.std()) < FLAT_STD, variant=variant)


def _compare(tq: np.ndarray, tc: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
    """(zncc, colour mad in 0..1, overlap) of query thumbnail ``tq`` and candidate ``tc``
    warped by the 2×3 affine ``m`` (candidate thumbnail pixels → query thumbnail pixels)."""
    cv2 = _cv2()
    size = (tq.shape[1], tq.shape[0])
    warped = cv2.warpAffine(tc.astype(np.float32), m, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))
    valid = cv2.warpAffine(np.ones(tc.shape[:2], np.uint8), m, size,
                           flags=cv2.INTER_NEAREST) > 0
    overlap = float(valid.mean())
    if overlap < MIN_OVERLAP:
        return -1.0, 1.0, overlap
    a = tq[valid].astype(np.float32)
    b = warped[valid]
    mad = float(np.abs(a - b).mean()) / 255.0
    ga, gb = a.mean(axis=1), b.mean(axis=1)
    ga -= ga.mean()
    gb -= gb.mean()
    denom = float(np.sqrt((ga * ga).sum() * (gb * gb).sum()))
    zncc = float((ga * gb).sum() / denom) if denom > 1e-6 else 0.0
    return zncc, mad, overlap


def verify_pair(q: CopyDescriptor, kp_xy: np.ndarray, kp_desc: np.ndarray, thumb: np.ndarray
                ) -> tuple[int, float, float, float, float]:
    """(inliers, inlier ratio, zncc, colour mad, overlap) of query ``q`` against one candidate."""
    cv2 = _cv2()
    tq = q.thumb
    hyps = [np.float32([[tq.shape[1] / thumb.shape[1], 0, 0],
                        [0, tq.shape[0] / thumb.shape[0], 0]])]
    inliers, ratio = 0, 0.0
    n_small = min(len(q.kp_desc), len(kp_desc))
    if n_small >= 3:
        matches = _matcher().match(q.kp_desc, kp_desc)
        if len(matches) >= 3:
            src = np.float32([kp_xy[mt.trainIdx] for mt in matches])
            dst = np.float32([q.kp_xy[mt.queryIdx] for mt in matches])
            m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=RANSAC_PX / HASH_SIDE,
                                                  maxIters=500, refineIters=10)
            if m is not None and mask is not None:
                inliers = int(mask.sum())
                ratio = inliers / n_small
                m = m.astype(np.float32)
                # keypoints are in units of the longer side; thumbnails have THUMB pixels there
                m[:, 2] *= THUMB
                hyps.append(m)
    best = max((_compare(tq, thumb, m) for m in hyps), key=lambda r: r[0] - r[1])
    return inliers, ratio, *best


class CopyStore:
    """Window hashes, keypoints and thumbnails of every indexed image; rows are index rows."""

    def __init__(self, window_phash, window_dhash, kp_offsets, kp_xy, kp_desc, thumbs, thumb_hw):
        self.window_phash = window_phash
        self.window_dhash = window_dhash
        self.kp_offsets = kp_offsets
        self.kp_xy = kp_xy
        self.kp_desc = kp_desc
        self.thumbs = thumbs
        self.thumb_hw = thumb_hw

    def __len__(self) -> int:
        return len(self.window_phash)

    @staticmethod
    def save(descriptors: list[CopyDescriptor], directory: Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        n = len(descriptors)
        np.save(d / "window_phash.npy", np.stack([x.window_phash for x in descriptors])
                if n else np.zeros((0, WINDOWS), np.uint64))
        np.save(d / "window_dhash.npy", np.stack([x.window_dhash for x in descriptors])
                if n else np.zeros((0, WINDOWS), np.uint64))
        counts = np.array([len(x.kp_desc) for x in descriptors], dtype=np.int64)
        np.save(d / "kp_offsets.npy", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        np.save(d / "kp_xy.npy", np.concatenate([x.kp_xy for x in descriptors]).astype(np.float16)
                if n else np.zeros((0, 2), np.float16))
        np.save(d / "kp_desc.npy", np.concatenate([x.kp_desc for x in descriptors])
                if n else np.zeros((0, 32), np.uint8))
        thumbs = np.full((n, THUMB, THUMB, 3), 255, dtype=np.uint8)
        hw = np.zeros((n, 2), dtype=np.uint8)
        for i, x in enumerate(descriptors):
            h, w = x.thumb.shape[:2]
            thumbs[i, :h, :w] = x.thumb
            hw[i] = (h, w)
        np.save(d / "thumbs.npy", thumbs)
        np.save(d / "thumb_hw.npy", hw)
        (d / _META).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                           "num_images": n, "windows": WINDOWS,
                                           "thumb": THUMB, "max_keypoints": MAX_KEYPOINTS}),
                               encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> CopyStore:
        d = Path(directory)
        meta = read_component_meta(d, _META, FORMAT, FORMAT_VERSION, _FILES, "copy-detection")
        arrays = [np.load(d / f, mmap_mode="r", allow_pickle=False) for f in _FILES]
        n = int(meta["num_images"])
        if (len(arrays[0]) != n or len(arrays[2]) != n + 1 or len(arrays[5]) != n
                or int(arrays[2][-1]) != len(arrays[3])):
            raise IndexFormatError(f"copy-detection data at {d} is inconsistent with its "
                                   f"metadata ({n} images); rebuild the index.")
        return cls(*arrays)

    def propose(self, q: CopyDescriptor, k: int, removed: np.ndarray | None = None
                ) -> np.ndarray:
        """Rows of the ``k`` images whose nearest window is nearest the query's whole-image
        hashes (ties by row), within half of the 128 bits."""
        best = None
        for d in (q, q.variant):
            if d is None:
                continue
            ph, dh = d.window_phash[0], d.window_dhash[0]
            dist = (hamming(self.window_phash.reshape(-1), ph)
                    + hamming(self.window_dhash.reshape(-1), dh)).reshape(len(self), WINDOWS)
            best = dist.min(axis=1) if best is None else np.minimum(best, dist.min(axis=1))
        if removed is not None and len(removed):
            best[np.asarray(removed, dtype=np.int64)] = 1 << 20
        near = np.flatnonzero(best <= 64)
        if len(near) > k:
            near = near[np.argpartition(best[near], k - 1)[:k]]
        return near[np.lexsort((near, best[near]))]

    def same_picture(self, a: int, b: int) -> bool:
        """Whether rows ``a`` and ``b`` hold the same picture (:data:`SAME_PICTURE_MAD`)."""
        if tuple(self.thumb_hw[a]) != tuple(self.thumb_hw[b]):
            return False
        diff = np.abs(np.asarray(self.thumbs[a], np.float32) - np.asarray(self.thumbs[b]))
        return float(diff.mean()) < SAME_PICTURE_MAD

    def verify(self, q: CopyDescriptor, rows: np.ndarray) -> np.ndarray:
        """(len(rows), len(VERIFY_FEATURES)) features of the query against each row."""
        out = np.zeros((len(rows), len(VERIFY_FEATURES)), dtype=np.float32)
        log_norm = float(np.log1p(MAX_KEYPOINTS))
        for j, row in enumerate(np.asarray(rows, dtype=np.int64)):
            if q.flat:
                out[j, 2], out[j, 3] = 0.0, 1.0
                continue
            a, b = int(self.kp_offsets[row]), int(self.kp_offsets[row + 1])
            h, w = (int(v) for v in self.thumb_hw[row])
            kp_xy = np.asarray(self.kp_xy[a:b], dtype=np.float32)
            kp_desc = np.asarray(self.kp_desc[a:b])
            thumb = np.asarray(self.thumbs[row, :h, :w])
            # the query as given and, if it has a coloured background, on white: the better
            # pixel agreement counts
            inl, ratio, zncc, mad, overlap = max(
                (verify_pair(d, kp_xy, kp_desc, thumb) for d in (q, q.variant) if d is not None),
                key=lambda r: r[2] - r[3])
            out[j] = (np.log1p(inl) / log_norm, ratio, zncc, mad, overlap, 1.0)
        return out
