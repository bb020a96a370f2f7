"""Proof photos, pure: the cheap checks a request makes (Pillow reads the header only) and
the work the worker does (decode, strip EXIF, thumbnail, digest)."""

import hashlib
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

from api.errors import InvalidPhoto, PhotoTooLarge
from schemas.tasks import MAX_PHOTO_BYTES, MAX_PHOTO_PIXELS, PHOTO_FORMATS

THUMBNAIL_PX = (320, 320)
# What Pillow raises on data that is not the image it claims to be.
_BROKEN = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def check_photo(data: bytes) -> str:
    """The photo's format, from its header; PhotoTooLarge or InvalidPhoto otherwise."""
    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoTooLarge(f"photo larger than {MAX_PHOTO_BYTES} bytes")
    try:
        with Image.open(BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except _BROKEN as exc:
        raise InvalidPhoto(f"photo is not a JPEG or PNG image ({exc})") from exc
    if fmt not in PHOTO_FORMATS:
        raise InvalidPhoto(f"photo is {fmt}; JPEG or PNG only")
    if width * height > MAX_PHOTO_PIXELS:
        raise InvalidPhoto(f"photo of {width}x{height} pixels: refused as a decompression bomb")
    return str(fmt)


@dataclass(frozen=True)
class ProcessedPhoto:
    sha256: str  # of the upload as received
    format: str
    width: int
    height: int
    clean: bytes  # re-encoded without EXIF (no location leaves with it)
    thumbnail: bytes  # JPEG


def process_photo(data: bytes) -> ProcessedPhoto:
    """Decodes the whole image (InvalidPhoto when it is broken past its header), turns it
    upright, re-encodes it without metadata, and makes a thumbnail."""
    fmt = check_photo(data)
    try:
        with Image.open(BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except _BROKEN as exc:
        raise InvalidPhoto(f"photo could not be decoded ({exc})") from exc
    if fmt == "JPEG" and upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
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
