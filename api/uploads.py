"""Reading an upload: the proof photo out of a multipart body, bounded before it is read."""

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.errors import InvalidPhoto, PhotoTooLarge
from runtime.http import ApiError, read_body_limited
from schemas.tasks import MAX_PHOTO_BYTES

PHOTO_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["photo"],
                    "properties": {"photo": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
# Room for the multipart framing around the largest photo.
MULTIPART_OVERHEAD = 64 * 1024


async def read_photo(request: Request, timeout_s: float) -> bytes:
    """The `photo` part of a multipart body; 413 as soon as the body passes the limit (before
    it is read whole), 422 when it is not multipart or has no photo."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidPhoto("send the photo as multipart/form-data, in a part named `photo`")
    try:
        body = await read_body_limited(request, MAX_PHOTO_BYTES + MULTIPART_OVERHEAD, timeout_s)
    except ApiError as exc:
        if exc.status == 413:
            raise PhotoTooLarge(f"photo larger than {MAX_PHOTO_BYTES} bytes") from exc
        raise

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers, chunks(), max_files=1, max_fields=8, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidPhoto(f"malformed multipart body: {exc.message}") from exc
    try:
        photo = form.get("photo")
        if not isinstance(photo, UploadFile):
            raise InvalidPhoto("no `photo` file part in the body")
        return await photo.read()
    finally:
        await form.close()
