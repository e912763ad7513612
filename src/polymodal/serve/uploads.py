"""Reading a request safely: bounded bodies, multipart or JSON, images sniffed and decoded in memory.

Nothing here touches the disk: the body is read into memory chunk by chunk and refused with 413 as
soon as it passes the limit (or at once when Content-Length says it will); multipart parts are
kept in memory too (starlette would spill parts over 1 MB to a temporary file). After such an early
refusal `LingeringClose` reads and discards the rest of the body, up to `Limits.drain_bytes` and
`Limits.drain_seconds`, before the connection closes, so that a client still sending reads the 413
rather than a connection reset. Images are
recognised by their first bytes, not by their name or declared type, then decoded by
`data.images.load_image`, which checks the pixel count from the header and drops EXIF. Audio (the
`audio` field) is sniffed the same way and decoded by `data.audio.load_audio` from memory, refused
over `Limits.max_audio_seconds` from its header before it is decoded in full.

Example:
    >>> sniff_image(b"PK\\x03\\x04...", "photo.png")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    RequestError: photo.png: not an image (a ZIP archive); send a PNG, JPEG, GIF, WebP, BMP or TIFF file
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.audio import AudioTooLongError, load_audio
from ..data.images import load_image
from ..errors import DataError, InputError
from .schemas import AudioUpload

Options = TypeVar("Options", bound=BaseModel)

# (magic prefix, offset, format name). Only formats PIL decodes and load_image accepts.
IMAGE_MAGIC = [(b"\x89PNG\r\n\x1a\n", 0, "PNG"), (b"\xff\xd8\xff", 0, "JPEG"), (b"GIF87a", 0, "GIF"),
               (b"GIF89a", 0, "GIF"), (b"WEBP", 8, "WebP"), (b"BM", 0, "BMP"), (b"II*\x00", 0, "TIFF"),
               (b"MM\x00*", 0, "TIFF")]
# Things people upload by mistake, named so the message says what we saw.
OTHER_MAGIC = [(b"PK\x03\x04", "a ZIP archive"), (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip file"),
               (b"<", "HTML or XML text"), (b"{", "JSON text"), (b"\x00\x00\x00", "a video or other binary file")]
SUPPORTED = "send a PNG, JPEG, GIF, WebP, BMP or TIFF file"
# (magic prefix, offset, format name): containers PyAV decodes sound from (the browser records WebM or Ogg/Opus)
AUDIO_MAGIC = [(b"RIFF", 0, "WAV"), (b"fLaC", 0, "FLAC"), (b"ID3", 0, "MP3"), (b"\xff\xfb", 0, "MP3"),
               (b"\xff\xf3", 0, "MP3"), (b"\xff\xf2", 0, "MP3"), (b"OggS", 0, "Ogg"),
               (b"\x1a\x45\xdf\xa3", 0, "WebM"), (b"ftyp", 4, "MP4"), (b"FORM", 0, "AIFF"),
               (b"\xff\xf1", 0, "AAC"), (b"\xff\xf9", 0, "AAC")]
AUDIO_SUPPORTED = "send a WAV, FLAC, MP3, Ogg, WebM or M4A recording"


class RequestError(InputError):
    """A bad request with its HTTP status (400, 413, 415, 422); the message says what to change."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    """What one request may send. `max_bytes` bounds the whole body, `max_pixels` each image.

    `drain_bytes` and `drain_seconds` bound the lingering close after a refusal that leaves part of
    the body unread (413 over `max_bytes`, 408 too slow): the server sends its answer, then reads and
    discards what the client is still sending, at most `drain_bytes` (64 MB) for at most
    `drain_seconds` (5 s), before it closes. A client that sends its whole body before reading
    (httpx, requests) then reads the answer; closing with bytes unread would make the kernel reset
    the connection and throw the answer away. Past either cap the connection is closed anyway.
    `drain_bytes=0` turns the lingering off.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    drain_bytes: int = 64 * 1024 * 1024
    drain_seconds: float = 5.0
    max_audio_seconds: float = 60.0  # longest audio upload (413 beyond), refused before it is decoded in full

    def as_dict(self) -> dict[str, float]:
        return {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels, "max_audio_seconds": self.max_audio_seconds}


class LingeringClose:
    """ASGI middleware: a response that closes the connection (`Connection: close`) while the request
    body is still arriving is sent at once, but its end is held back while the rest of the body is read
    and discarded, up to `limits.drain_bytes` and `limits.drain_seconds`; then the server closes.

    This is nginx's lingering close (Go's net/http also reads some of an unread body and waits a
    moment before closing, for the same reason): an early answer (a 413 from Content-Length, or once
    a chunked body passes the limit) without keeping the body in memory, and without the connection
    reset that closing on unread bytes causes. A body declared
    larger than what is left to drain is not drained (it could not end cleanly), nor one whose client
    waits for `100 Continue` and has sent nothing.
    """

    def __init__(self, app: ASGIApp, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limits.drain_bytes <= 0:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.lower() for k, v in scope.get("headers", [])}
        try:
            declared: int | None = int(headers[b"content-length"])
        except (KeyError, ValueError):
            declared = None
        received, messages, closing = 0, 0, False
        done = not ((declared or 0) > 0 or b"chunked" in headers.get(b"transfer-encoding", b""))

        async def counting_receive() -> Message:
            nonlocal received, messages, done
            message = await receive()
            if message["type"] == "http.request":
                received, messages = received + len(message.get("body", b"")), messages + 1
                done = done or not message.get("more_body", False)
            else:  # http.disconnect: nothing more will come
                done = True
            return message

        async def lingering_send(message: Message) -> None:
            nonlocal closing
            if message["type"] == "http.response.start":
                closing = any(k.lower() == b"connection" and b"close" in v.lower() for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and closing and not done:
                await send({**message, "more_body": True})  # the whole answer goes out now
                waits_for_continue = b"100-continue" in headers.get(b"expect", b"") and not messages
                if not waits_for_continue and (declared is None or declared - received <= self.limits.drain_bytes):
                    await self._drain(counting_receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}  # then the close
            await send(message)

        await self.app(scope, counting_receive, lingering_send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop request body messages until the body ends or a cap is reached."""

        async def discard() -> None:
            drained = 0
            while drained <= self.limits.drain_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                drained += len(message.get("body", b""))

        try:
            await asyncio.wait_for(discard(), self.limits.drain_seconds)
        except (TimeoutError, asyncio.TimeoutError):
            pass


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, read in chunks; 413 before reading past `max_bytes` (or at once from Content-Length)."""
    declared = request.headers.get("content-length")
    too_big = f"request body is over the {max_bytes / 2**20:.1f} MB limit; send a smaller image"
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise RequestError(f"{too_big} (Content-Length {int(declared):,} bytes)", 413)
        except ValueError:
            raise RequestError(f"bad Content-Length header {declared!r}", 400) from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:  # a client that lies about (or omits) Content-Length stops here
            raise RequestError(too_big, 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _replay(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def read_fields(request: Request, limits: Limits) -> tuple[dict[str, Any], bytes | None, str]:
    """Parse a multipart or JSON request into (fields, image bytes or None, image name).

    Multipart: the image is the file part named `image`; other parts are form fields.
    JSON: an object; its `image` key, if any, is base64 and is decoded here.
    Audio (a file part or a base64 JSON value named `audio`) becomes `fields["audio"]`, an `AudioUpload`.
    """
    body = await read_body(request, limits.max_bytes)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _read_multipart(request, body, limits)
    if ctype in ("application/json", "") or ctype.endswith("+json"):
        if not body.strip():
            raise RequestError("empty request body; send JSON with an 'image' (base64) or a multipart upload "
                               "with an 'image' file field", 400)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"request body is not valid JSON ({err})", 400) from None
        if not isinstance(data, dict):
            raise RequestError(f"JSON body must be an object, got {type(data).__name__}", 422)
        if isinstance(data.get("audio"), str) and data["audio"]:
            data["audio"] = AudioUpload(decode_base64(data["audio"], "audio"), "audio")
        image = data.get("image")
        if isinstance(image, str) and image:
            return data, decode_base64(image), "image"
        return data, None, "image"
    raise RequestError(f"unsupported Content-Type {ctype!r}; send multipart/form-data (curl -F image=@photo.png) "
                       f"or application/json with a base64 'image'", 415)


async def _read_multipart(request: Request, body: bytes, limits: Limits) -> tuple[dict[str, Any], bytes | None, str]:
    parser = MultiPartParser(request.headers, _replay(body), max_files=4, max_fields=64, max_part_size=64 * 1024)
    parser.spool_max_size = limits.max_bytes + 1  # keep file parts in memory: uploads are never stored
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise RequestError(f"malformed multipart body: {err.message}", 400) from None
    fields: dict[str, Any] = {}
    image: bytes | None = None
    name = "image"
    files = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append(key)
            if key == "image":
                image, name = await value.read(), value.filename or "image"
            elif key == "audio":
                fields["audio"] = AudioUpload(await value.read(), value.filename or "audio")
            await value.close()
        elif key in ("image", "audio"):
            raise RequestError(f"multipart field {key!r} must be a file upload, not text; "
                               f"use -F {key}=@{'photo.png' if key == 'image' else 'question.wav'} (with the @)", 422)
        elif value != "":  # an empty form input means "not given" (browsers send every input)
            fields[key] = value
    if image is None and "audio" not in fields and files:
        raise RequestError(f"no file field named 'image' (got file field {files[0]!r}); "
                           f"upload the image as -F image=@photo.png", 422)
    return fields, image, name


def decode_base64(data: str, field: str = "image") -> bytes:
    """Base64 (standard or URL-safe, with or without a data: URL prefix) -> bytes; 422 if it is not."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = data.strip().replace("-", "+").replace("_", "/")
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"'{field}' is not valid base64; send the file's bytes base64-encoded "
                           f"(e.g. base64 -w0 {'photo.png' if field == 'image' else 'question.wav'})", 422) from None


def sniff_image(data: bytes, name: str = "image") -> str:
    """The image format from the first bytes, or a 415 RequestError saying what the data looks like."""
    if not data:
        raise RequestError(f"{name}: empty upload (0 bytes); choose an image file", 400)
    for magic, offset, fmt in IMAGE_MAGIC:
        if data[offset:offset + len(magic)] == magic and (fmt != "WebP" or data[:4] == b"RIFF"):
            return fmt
    head = data[:64].lstrip()
    what = next((desc for magic, desc in OTHER_MAGIC if head.startswith(magic)), "an unknown file type")
    raise RequestError(f"{name}: not an image ({what}); {SUPPORTED}", 415)


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height read straight from a PNG, GIF, BMP or JPEG header, without decoding anything.

    PIL gives up on a file that is only a header ("cannot identify image file"), but a header that
    claims 100000 x 100000 pixels is a decompression bomb and must be refused as too large (413).

    Example:
        >>> header_size(b"GIF89a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little"), "GIF")
        (640, 480)
    """
    if fmt == "PNG" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if fmt == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if fmt == "BMP" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if fmt == "JPEG":
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
    return None


def decode_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """Sniff, check the size from the header, decode in memory; 413 for too many pixels, 422 if broken."""
    fmt = sniff_image(data, name)
    size = header_size(data, fmt)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        width, height = size
        raise RequestError(f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{limits.max_pixels:,}; send a smaller image", 413)
    try:
        return load_image(data, max_pixels=limits.max_pixels, name=name)
    except DataError as err:
        # load_image names the pixel count in both of its size messages; everything else is a broken file.
        status = 413 if "pixels" in str(err) and "limit" in str(err) else 422
        raise RequestError(str(err), status) from None


def sniff_audio(data: bytes, name: str = "audio") -> str:
    """The audio container from the first bytes, or a 415 RequestError saying what the data looks like.

    Example:
        >>> sniff_audio(b"RIFF\\x24\\x00\\x00\\x00WAVEfmt ", "question.wav")
        'WAV'
    """
    if not data:
        raise RequestError(f"{name}: empty upload (0 bytes); record the question again", 400)
    for magic, offset, fmt in AUDIO_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return fmt
    head = data[:64].lstrip()
    image = next((f for magic, offset, f in IMAGE_MAGIC if data[offset:offset + len(magic)] == magic), None)
    what = f"a {image} image" if image else next((d for magic, d in OTHER_MAGIC if head.startswith(magic)),
                                                 "an unknown file type")
    raise RequestError(f"{name}: not audio ({what}); {AUDIO_SUPPORTED}", 415)


def decode_audio(data: bytes, name: str, limits: Limits, sample_rate: int = 16000) -> Any:
    """Sniff and decode in memory to a mono waveform (S,) at `sample_rate`: 415 not audio, 413 longer than
    `limits.max_audio_seconds` (from the header, before decoding it all), 422 broken or without sound."""
    sniff_audio(data, name)
    try:
        return load_audio(data, sample_rate, max_seconds=limits.max_audio_seconds, name=name)
    except AudioTooLongError as err:
        raise RequestError(str(err), 413) from None
    except DataError as err:
        raise RequestError(str(err), 422) from None


def validate(model: type[Options], fields: dict[str, Any]) -> Options:
    """Validate fields against a pydantic model; a 422 RequestError lists every problem in one line."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        raise RequestError(validation_message(err.errors()), 422) from None


def validation_message(errors: Any) -> str:
    """pydantic/FastAPI error dicts -> "field 'beam_size': Input should be ... (got 'abc'); ..."."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        got = e.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) and len(repr(got)) < 60 else ""
        if e.get("type") == "extra_forbidden":
            msg = "unknown field; check the spelling (see /docs)"
        parts.append(f"field '{where}': {msg}{shown}" if where != "body" else f"{msg}{shown}")
    return "invalid request: " + "; ".join(parts)
