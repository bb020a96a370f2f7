"""Proof photos, pure: the request's header checks and the worker's processing; blobs."""

import asyncio
from io import BytesIO
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageOps

from jobs.blobs import DirectoryBlobStore
from jobs.errors import InvalidPhoto, PhotoTooLarge
from jobs.photos import THUMBNAIL_PX, check_photo, process_photo
from schemas.tasks import MAX_PHOTO_BYTES
from tests.support.crafted_photos import corrupt_gps_jpeg


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (800, 600), gps: bool = False) -> bytes:
    image = Image.new("RGB", size, (200, 120, 40))
    out = BytesIO()
    if gps:
        exif = Image.Exif()
        exif[ExifTags.Base.Make] = "phone"
        exif[ExifTags.Base.GPSInfo] = {1: "N", 2: (12.0, 58.0, 1.0)}
        image.save(out, format=fmt, exif=exif)
    else:
        image.save(out, format=fmt)
    return out.getvalue()


def test_jpeg_and_png_pass_the_header_check() -> None:
    assert check_photo(image_bytes("JPEG")) == "JPEG"
    assert check_photo(image_bytes("PNG")) == "PNG"


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", image_bytes("GIF"), image_bytes("BMP")],
    ids=["empty", "text", "gif", "bmp"],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidPhoto):
        check_photo(data)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    # A small file that would decode to 100 million pixels.
    bomb = BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 1_000_000
    with pytest.raises(InvalidPhoto, match="bomb"), pytest.warns(Image.DecompressionBombWarning):
        check_photo(bomb.getvalue())


def test_over_the_size_limit_is_too_large() -> None:
    with pytest.raises(PhotoTooLarge):
        check_photo(b"\xff" * (MAX_PHOTO_BYTES + 1))


def test_processing_strips_exif_and_makes_a_thumbnail() -> None:
    original = image_bytes("JPEG", (1600, 1200), gps=True)
    assert Image.open(BytesIO(original)).getexif().get(ExifTags.Base.GPSInfo)
    photo = process_photo(original)
    assert (photo.format, photo.width, photo.height) == ("JPEG", 1600, 1200)
    assert len(photo.sha256) == 64
    clean = Image.open(BytesIO(photo.clean))
    assert not clean.getexif()  # no location, no metadata at all
    thumb = Image.open(BytesIO(photo.thumbnail))
    assert max(thumb.size) == max(THUMBNAIL_PX)


def test_a_photo_broken_past_its_header_fails_in_processing() -> None:
    truncated = image_bytes("JPEG", (1600, 1200))[:2000]
    assert check_photo(truncated) == "JPEG"  # the request cannot know: the header is fine
    with pytest.raises(InvalidPhoto):
        process_photo(truncated)


def test_blobs_are_content_addressed_and_keys_are_checked(tmp_path: Path) -> None:
    blobs = DirectoryBlobStore(tmp_path)
    key = blobs.put(b"photo")
    assert blobs.put(b"photo") == key and blobs.get(key) == b"photo"
    blobs.put_as("task-1-thumbnail", b"small")
    assert blobs.get("task-1-thumbnail") == b"small"
    for bad in ("", "../etc", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            blobs.get(bad)


BOUNDARY = "b0undary"


def multipart(*parts: tuple[str, bytes], closed: bool = True) -> bytes:
    body = b""
    for name, data in parts:
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="p.jpg"'
                "\r\nContent-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


def upload(
    body: bytes,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    chunk: int = 65536,
    stall: bool = False,
) -> bytes:
    """read_photo over a real ASGI request whose body arrives in chunks."""
    from starlette.requests import Request

    from api.uploads import read_photo

    messages = [
        {"type": "http.request", "body": body[i : i + chunk], "more_body": True}
        for i in range(0, len(body), chunk)
    ]
    if not stall:
        messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # a sender that stopped sending: nothing more, ever
        raise AssertionError

    scope = {
        "type": "http", "method": "POST", "path": "/", "query_string": b"",
        "headers": [(b"content-type", content_type.encode())],
    }  # fmt: skip
    return asyncio.run(read_photo(Request(scope, receive), timeout_s=0.5))


def test_the_photo_part_is_read_as_it_arrives_beside_small_fields() -> None:
    photo = image_bytes()
    assert upload(multipart(("note", b"left at the door"), ("photo", photo)), chunk=7) == photo
    assert upload(multipart(("photo", photo), ("photo", b"second"))) == photo  # the first


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{}", "application/json", "multipart/form-data"),
        (multipart(("photo", b"x")), "multipart/form-data", "multipart/form-data"),  # no boundary
        (multipart(("other", b"x")), None, "no `photo` file part"),
        (multipart(("photo", b"x"), closed=False), None, "closing boundary"),
        (multipart(*[("f", b"x")] * 9), None, "more than 8 parts"),
        (multipart(("note", b"x" * 70_000), ("photo", b"x")), None, "pass 65536 bytes"),
        (
            b"--" + BOUNDARY.encode() + b"\r\nX-Long: " + b"h" * 9000 + b"\r\n\r\n",
            None,
            "header size",
        ),
        (b"garbage that is no multipart at all", None, "malformed multipart body"),
    ],
)
def test_a_body_that_holds_no_proper_photo_part_is_refused(
    body: bytes, content_type: str | None, message: str
) -> None:
    with pytest.raises(InvalidPhoto, match=message):
        upload(body, content_type or f"multipart/form-data; boundary={BOUNDARY}")


def test_a_body_past_the_limit_is_too_large_before_it_is_read_whole() -> None:
    with pytest.raises(PhotoTooLarge):
        upload(multipart(("photo", b"x" * (MAX_PHOTO_BYTES + 70_000))))


def test_a_body_that_stops_arriving_times_out() -> None:
    from runtime.http import ApiError

    with pytest.raises(ApiError) as caught:
        upload(multipart(("photo", b"x" * 1000)), stall=True)
    assert caught.value.status == 408


# Pillow warns about the crafted EXIF as it reads it; what it raises is the point here.
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_whatever_pillow_raises_on_a_crafted_photo_is_a_refused_proof() -> None:
    poison = corrupt_gps_jpeg()
    assert check_photo(poison) == "JPEG"  # its header reads well: the request takes it
    with Image.open(BytesIO(poison)) as image, pytest.raises(TypeError):
        ImageOps.exif_transpose(image)  # what the worker met, not one of Pillow's own errors
    with pytest.raises(InvalidPhoto, match="TypeError"):
        process_photo(poison)


def test_the_clean_photo_keeps_no_jpeg_comment() -> None:
    out = BytesIO()
    Image.new("RGB", (64, 48)).save(out, "JPEG", comment=b"taken at 12 Main St")
    clean = process_photo(out.getvalue()).clean
    assert b"Main St" in out.getvalue() and b"Main St" not in clean
    assert "comment" not in Image.open(BytesIO(clean)).info
