"""Request bodies: read with a byte limit (413 before the body is read whole), multipart parsed in memory.

Nothing is spooled to disk: the whole body is bounded by --max-upload-mb and kept in memory, and the multipart
parts are collected from python-multipart's streaming parser into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Optional

from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import UsageError
from .errors import UploadTooLarge

MAX_PARTS = 64


def too_large(limit: int, got: Optional[int] = None) -> UploadTooLarge:
    size = f"{got:,} bytes" if got is not None else f"more than {limit:,} bytes"
    return UploadTooLarge(
        f"the request body is {size}, over the server's limit of {limit:,} bytes (--max-upload-mb {limit / 2**20:g})"
    )


def check_length(content_length: Optional[str], limit: int) -> None:
    """Refuse from the Content-Length header alone, before reading a byte of the body."""
    if content_length is None:
        return
    try:
        n = int(content_length)
    except ValueError:
        raise UsageError(f"Content-Length must be an integer, got {content_length!r}") from None
    if n > limit:
        raise too_large(limit, n)


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, counting bytes as they arrive: past ``limit`` it stops reading and raises UploadTooLarge."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


@dataclass
class Part:
    name: str
    filename: Optional[str]
    content_type: Optional[str]
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """multipart/form-data -> its parts (in memory; at most MAX_PARTS)."""
    _, opts = parse_options_header(content_type)
    boundary = opts.get(b"boundary")
    if not boundary:
        raise UsageError("multipart/form-data without a boundary parameter in its Content-Type")
    parts: list[Part] = []
    cur: dict = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise UsageError(f"too many multipart parts (at most {MAX_PARTS})")
        cur.clear()
        cur.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        cur["headers"][bytes(header_field).decode("latin-1").lower()] = bytes(header_value).decode("latin-1")
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].extend(data[start:end])

    def on_part_end() -> None:
        disp, dopts = parse_options_header(cur["headers"].get("content-disposition", ""))
        if disp != b"form-data" or b"name" not in dopts:
            raise UsageError("a multipart part without Content-Disposition: form-data; name=...")
        fn = dopts.get(b"filename")
        parts.append(
            Part(
                name=dopts[b"name"].decode("utf-8", "replace"),
                filename=fn.decode("utf-8", "replace") if fn is not None else None,
                content_type=cur["headers"].get("content-type"),
                data=bytes(cur["data"]),
            )
        )

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"malformed multipart body ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    return parts
