"""Proof photos, pure: the cheap checks a request makes (Pillow reads the header only) and
the work the worker does (decode, strip EXIF, thumbnail, digest)."""

import hashlib
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps

from jobs.errors import InvalidPhoto, PhotoTooLarge
from schemas.tasks import MAX_PHOTO_BYTES, MAX_PHOTO_PIXELS, PHOTO_FORMATS

THUMBNAIL_PX = (320, 320)


def check_photo(data: bytes) -> str:
    """The photo's format, from its header; PhotoTooLarge or InvalidPhoto otherwise."""
    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoTooLarge(f"photo larger than {MAX_PHOTO_BYTES} bytes")
    try:
        with Image.open(BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except Exception as exc:  # what Pillow raises on a crafted header is the upload's fault
        raise InvalidPhoto(f"photo is not a JPEG or PNG image ({exc})") from exc
    if fmt not in PHOTO_FORMATS:
        raise InvalidPhoto(f"photo is {fmt}; JPEG or PNG only")
    if width * height > MAX_PHOTO_PIXELS:
        raise InvalidPhoto(f"photo of {width}x{height} pixels: refused as a decompression bomb")
    return str(fmt)


@dataclass(frozen=True)
class ProcessedPhoto:
    """A proof photo after processing: the cleaned JPEG (no EXIF), its thumbnail, its digest, format
    and size."""

    sha256: str  # of the upload as received
    format: str
    width: int
    height: int
    clean: bytes  # re-encoded without EXIF (no location leaves with it)
    thumbnail: bytes  # JPEG


def process_photo(data: bytes) -> ProcessedPhoto:
    """Decodes the whole image, turns it upright, re-encodes it without metadata, and
    makes a thumbnail. InvalidPhoto for anything that goes wrong on the way: Pillow raises
    more than it documents on crafted files (a TypeError from `exif_transpose` on a corrupt
    GPS block), and whatever an upload makes it raise is the upload's fault, never a
    reason to stop processing the photos after it."""
    fmt = check_photo(data)
    try:
        return _process(data, fmt)
    except Exception as exc:
        raise InvalidPhoto(
            f"photo could not be decoded ({type(exc).__name__}: {exc})"[:500]
        ) from exc


def _process(data: bytes, fmt: str) -> ProcessedPhoto:
    with Image.open(BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    if fmt == "JPEG" and upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
    # A JPEG comment travels in `info` and Pillow writes it back: none leaves with it.
    upright.info.pop("comment", None)
    clean = BytesIO()
    # No `exif=` argument: Pillow writes no EXIF block, so GPS tags are gone.
    upright.save(clean, format=fmt)
    thumb = upright.convert("RGB")
    thumb.thumbnail(THUMBNAIL_PX)
    thumbnail = BytesIO()
    thumb.save(thumbnail, format="JPEG", quality=80)
    return ProcessedPhoto(
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=upright.width,
        height=upright.height,
        clean=clean.getvalue(),
        thumbnail=thumbnail.getvalue(),
    )
