"""Reading an upload: the proof photo out of a multipart body, bounded before it is read."""

from typing import TYPE_CHECKING, Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from jobs.errors import InvalidPhoto, PhotoTooLarge
from runtime.http import ApiError, stream_body_limited

if TYPE_CHECKING:  # its types exist for type checkers only
    from python_multipart.multipart import MultipartCallbacks
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
MAX_PARTS = 8
MAX_OTHER_PART_BYTES = 64 * 1024


class PhotoForm:
    """python-multipart's callbacks for a body that must hold a `photo` file part: keeps
    that part's bytes (no temporary file: the photo is bounded and goes to the blob store
    whole) and bounds everything else (the parser itself bounds a part's headers).
    Raises InvalidPhoto from inside the parser."""

    def __init__(self) -> None:
        self.photo: list[bytes] | None = None
        self.ended = False
        self._parts = 0
        self._other_bytes = 0
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._current: list[bytes] | None = None

    def callbacks(self) -> "MultipartCallbacks":
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidPhoto(f"more than {MAX_PARTS} parts in the body")
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"photo" and self.photo is None:
            self.photo = self._current = []
        else:
            self._current = None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.append(data[start:end])
            return
        self._other_bytes += end - start
        if self._other_bytes > MAX_OTHER_PART_BYTES:
            raise InvalidPhoto(f"parts other than `photo` pass {MAX_OTHER_PART_BYTES} bytes")

    def _part_end(self) -> None:
        self._current = None

    def _end(self) -> None:
        self.ended = True


async def read_photo(request: Request, timeout_s: float) -> bytes:
    """The `photo` part of a multipart body, parsed as it arrives; 413 as soon as the body
    passes the limit (before it is read whole), 422 when it is not multipart or has no
    photo."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidPhoto("send the photo as multipart/form-data, in a part named `photo`")
    form = PhotoForm()
    try:
        parser = MultipartParser(boundary, form.callbacks())
        limit = MAX_PHOTO_BYTES + MULTIPART_OVERHEAD
        async for chunk in stream_body_limited(request, limit, timeout_s):
            parser.write(chunk)
        parser.finalize()
    except ApiError as exc:
        if exc.status == 413:
            raise PhotoTooLarge(f"photo larger than {MAX_PHOTO_BYTES} bytes") from exc
        raise
    except MultipartParseError as exc:
        raise InvalidPhoto(f"malformed multipart body: {exc}") from exc
    if not form.ended:
        raise InvalidPhoto("malformed multipart body: it ends before its closing boundary")
    if form.photo is None:
        raise InvalidPhoto("no `photo` file part in the body")
    return b"".join(form.photo)
