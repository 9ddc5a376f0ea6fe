"""Robust image decoding: whatever a user hands in becomes one RGB picture, or one clear error.

:func:`decode_image` turns bytes (or a path) into an RGB ``PIL.Image`` no larger than
``max_side`` on its longest side:

* modes: RGBA / LA / palette-with-transparency are composited on white; 16-bit and float
  grayscale are rescaled to 8 bits; CMYK, palette, grayscale and bilevel are converted to RGB;
* EXIF orientation is applied (a photo taken on its side is turned upright);
* animated GIF / APNG / WebP: the first frame;
* SVG: rasterised with ``cairosvg`` (installed with GIF), or refused with a message naming it.

Pixel limit: an image whose header declares more than :data:`MAX_PIXELS` pixels is a possible
decompression bomb and is refused with :class:`ImageError` (reason ``too_large``) before any
pixel is decoded. Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) is set to the same limit when
this module is imported, so no other code path in the process decodes a larger raster by
accident. JPEGs are decoded at a reduced scale when that suffices (``Image.draft``). Some
``openclipart-png`` images (up to 623 megapixels) are refused this way; a build skips them and
lists them in its manifest.

Every failure is an :class:`ImageError` (an :class:`~gif_core.errors.InputError`) with a short
machine-readable ``reason`` (:data:`REASONS`) and a message naming the file, the problem and the
fix. A build skips and reports such items; a query refuses them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InputError

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000
"""Largest raster decoded (width × height, 64 megapixels ≈ 256 MB as RGBA)."""
MAX_BYTES = 256 * 1024 * 1024
"""Largest image file read (256 MiB)."""
DEFAULT_MAX_SIDE = 512
"""Decoded images are shrunk to this longest side; encoders and hashes need far less."""
SVG_SIDE = 512
"""Longest side an SVG is rasterised to."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".svg")
"""File name endings read as images in a folder or a tar shard."""

REASONS = ("unreadable", "empty", "too_big_file", "not_an_image", "svg_unsupported",
           "too_large", "damaged")


class ImageError(InputError):
    """One image cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodedImage:
    """An image normalised to RGB, and facts about the original bytes."""

    image: Image.Image
    sha256: str
    """SHA-256 of the original bytes (the content hash of the sample)."""
    width: int
    height: int
    format: str


def read_image_bytes(path: str | Path) -> bytes:
    """Read an image file, with errors that name the path and the fix."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ImageError(f"{p}: {size:,} bytes, over the {MAX_BYTES:,}-byte limit for one "
                             f"image. Shrink or re-encode it.", "too_big_file")
        return p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file. Check the path.", "unreadable") from None
    except IsADirectoryError:
        raise ImageError(f"{p}: is a directory, not an image file.", "unreadable") from None
    except PermissionError:
        raise ImageError(f"{p}: permission denied. Make it readable (chmod a+r).",
                         "unreadable") from None
    except OSError as exc:
        raise ImageError(f"{p}: cannot be read ({exc.strerror or exc}).", "unreadable") from None


def is_svg(data: bytes) -> bool:
    head = data[:2048].lstrip().lower()
    return head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head) or \
        (head.startswith(b"<!doctype svg"))


def _rasterise_svg(data: bytes, where: str) -> bytes:
    try:
        import cairosvg
    except (ImportError, OSError):
        # OSError: the Python package is there but the cairo C library is not
        raise ImageError(f"{where}: is an SVG, and SVG needs cairosvg with the cairo library "
                         f"(`pip install cairosvg`, `apt-get install libcairo2`). Or convert it "
                         f"to PNG first.", "svg_unsupported") from None
    try:
        return cairosvg.svg2png(bytestring=data, output_width=SVG_SIDE, unsafe=False)
    except Exception as exc:  # cairosvg raises many types (XML, value, cairo errors)
        if type(exc).__name__ in ("EntitiesForbidden", "DTDForbidden",
                                  "ExternalReferenceForbidden"):
            # cairosvg's safe mode (defusedxml) refuses entity declarations: entity-expansion
            # bombs and external references
            raise ImageError(f"{where}: the SVG declares XML entities or external references, "
                             f"which are refused for safety. Convert it to PNG first.",
                             "svg_unsupported") from None
        text = str(exc)
        if "INVALID_SIZE" in text or "too big" in text:
            raise ImageError(f"{where}: the SVG declares a size too large to rasterise (the "
                             f"output would be over the {MAX_PIXELS:,}-pixel limit or cairo's "
                             f"own). Give it a width and height of a few thousand units, or "
                             f"convert it to PNG.", "too_large") from None
        import textwrap

        raise ImageError(f"{where}: SVG cannot be rasterised ({type(exc).__name__}: "
                         f"{textwrap.shorten(text, 120, placeholder=' …')}). Check the file, "
                         f"or convert it to PNG.", "damaged") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit or float grayscale: rescale the actual range to 0..255
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.round().astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def decode_image(source: bytes | str | Path, *, where: str | None = None,
                 max_side: int = DEFAULT_MAX_SIDE) -> DecodedImage:
    """Decode bytes or a file into an RGB image no larger than ``max_side``.

    Args:
        source: the image bytes, or a path to read.
        where: how to name the image in error messages (default: the path, or "image").
        max_side: longest side of the returned image (aspect ratio kept; never enlarged).

    Raises:
        ImageError: with ``reason`` in :data:`REASONS` and a message naming the fix.
    """
    if isinstance(source, (str, Path)):
        where = where or str(source)
        data = read_image_bytes(source)
    else:
        data = bytes(source)
        where = where or "image"
    if not data:
        raise ImageError(f"{where}: empty file (0 bytes). Replace it with the image.", "empty")
    sha = hashlib.sha256(data).hexdigest()
    fmt_hint = ""
    if is_svg(data):
        data, fmt_hint = _rasterise_svg(data, where), "SVG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{where}: not an image Pillow can read (starts with "
                         f"{data[:8]!r}). Give a PNG, JPEG, GIF, WebP, BMP, TIFF or SVG file.",
                         "not_an_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{where}: declares more than {MAX_PIXELS:,} pixels (the limit against "
                         f"decompression bombs). Downscale it first.", "too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{where}: damaged image header ({exc}). Re-export the file.",
                         "damaged") from None
    width, height = im.size
    fmt = fmt_hint or (im.format or "unknown")
    try:
        if width * height > MAX_PIXELS:
            raise ImageError(
                f"{where}: {width}×{height} = {width * height:,} pixels, over the "
                f"{MAX_PIXELS:,}-pixel limit (a decompression-bomb guard). Downscale it "
                f"first, e.g. `convert IN -resize 4000x4000 OUT`.", "too_large")
        if im.format == "JPEG":
            im.draft("RGB", (max_side, max_side))  # decode at 1/2..1/8 scale: less work
        im.seek(0)  # animated formats: the first frame
        im.load()
        im = ImageOps.exif_transpose(im) or im
        im = _to_rgb(im)
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated"),
        # SyntaxError (broken chunks) or ValueError
        raise ImageError(f"{where}: damaged or truncated {fmt} data ({exc}). Re-export or "
                         f"re-download the file.", "damaged") from None
    return DecodedImage(image=im, sha256=sha, width=width, height=height, format=fmt)
