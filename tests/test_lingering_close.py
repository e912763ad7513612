"""Oversize uploads against a real uvicorn server: every client reads its 413, none gets a reset.

The server answers an oversize body early (from Content-Length, or once a chunked body passes the
limit), then drains the rest for a bounded time and size before it closes (`uploads.LingeringClose`).
Without the drain a client that sends its whole body before reading (httpx) saw a connection reset.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from polymodal.serve import ServeConfig, create_app
from polymodal.serve.uploads import Limits
from tests.conftest import tiny_model

LIMIT = 2**20  # 1 MB
OVER = LIMIT + 3 * 2**20  # each oversize upload: the limit and 3 MB more


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def serve(limits: Limits) -> Iterator[str]:
    """uvicorn on 127.0.0.1 (a free port) in a thread, with the tiny captioner; yields the base URL."""
    app = create_app({"tiny": tiny_model()}, config=ServeConfig(limits=limits, max_wait_ms=5, timeout_s=10))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield from serve(Limits(max_bytes=LIMIT, drain_bytes=16 * 2**20, drain_seconds=2.0))


def oversize_json() -> bytes:
    return json.dumps({"image": "A" * OVER}).encode()


async def chunked(total: int, size: int = 256 * 1024) -> Any:
    """A body without Content-Length that grows past the limit mid-stream."""
    for _ in range(total // size):
        yield b"\x00" * size
        await asyncio.sleep(0)


async def send_oversize(http: httpx.AsyncClient, how: str) -> httpx.Response:
    if how == "declared":  # Content-Length says it is too big: refused before any of the body is read
        return await http.post("/v1/caption", content=oversize_json(), headers={"content-type": "application/json"})
    if how == "multipart":
        return await http.post("/v1/caption", files={"image": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(OVER))})
    return await http.post("/v1/caption", content=chunked(OVER), headers={"content-type": "application/json"})


def assert_413(response: Any) -> None:
    assert isinstance(response, httpx.Response), f"{type(response).__name__}: {response!r}"
    assert response.status_code == 413, response.text
    assert "over the 1.0 MB limit" in response.json()["error"]
    assert response.headers["connection"] == "close"


def test_concurrent_and_sequential_oversize_uploads_all_read_their_413(url: str) -> None:
    small = png()

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            kinds = ["declared", "multipart", "chunked"]
            oversize = [send_oversize(http, kinds[i % 3]) for i in range(8)]
            normal = [http.post("/v1/caption", files={"image": ("a.png", small, "image/png")}, data={"nbest": "2"})
                      for _ in range(3)] + [http.get("/healthz") for _ in range(3)]
            together = await asyncio.gather(*oversize, *normal, return_exceptions=True)
            sequential = []
            for i in range(4):
                try:
                    sequential.append(await send_oversize(http, kinds[i % 3]))
                except httpx.HTTPError as err:
                    sequential.append(err)
                sequential.append(await http.get("/healthz"))  # the connection pool recovers at once
            return together[:8], together[8:], sequential

    oversize, normal, sequential = asyncio.run(main())
    for response in oversize + sequential[0::2]:
        assert_413(response)
    for response in normal + sequential[1::2]:
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert [len(r.json()["captions"]) for r in normal[:3]] == [2, 2, 2]


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `timeout`), and when it closed."""
    sock.settimeout(timeout)
    start, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, float("inf")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_never_finishes_its_body_is_cut_off_after_the_time_cap(url: str, framing: str) -> None:
    head = b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    part = b"\x00" * (LIMIT + 65536)  # past the limit, then the client stalls with its body unfinished
    if framing == "content-length":
        request = head + f"Content-Length: {3 * LIMIT}\r\n\r\n".encode() + part
    else:
        request = head + b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(part):x}\r\n".encode() + part + b"\r\n"
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(request)
        data, closed_after = _read_until_closed(sock, timeout=8)
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"over the 1.0 MB limit" in data
    assert closed_after < 2.0 + 3, f"the server held the connection {closed_after:.1f} s (drain cap 2 s)"


def test_draining_stops_at_the_byte_cap(url: str) -> None:
    """A client that sends forever: the server reads at most the limit and the drain cap, then closes."""
    frame = b"10000\r\n" + b"\x00" * 65536 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sock.settimeout(5)
        try:
            while sent < 256 * 2**20:
                sock.sendall(frame)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
    # 1 MB read before the refusal, 16 MB drained; the rest is what the socket buffers held.
    assert LIMIT + 16 * 2**20 <= sent < 64 * 2**20, sent / 2**20


def test_when_the_middleware_drains_and_when_it_does_not() -> None:
    """No drain without a body, with drain_bytes=0, for a body declared larger than the drain cap, or
    for a client waiting for `100 Continue` that has sent nothing; otherwise up to the byte cap."""
    from polymodal.serve.uploads import LingeringClose

    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": [(b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"no"})

    async def receive() -> dict:
        calls.append("receive")
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def run(limits: Limits, headers: list) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "headers": headers}
        await LingeringClose(app, limits)(scope, receive, send)
        return sent

    big = [(b"content-length", b"5000000")]
    off = asyncio.run(run(Limits(drain_bytes=0), big))
    assert calls == [] and [m.get("more_body", False) for m in off] == [False, False]
    too_big_to_drain = asyncio.run(run(Limits(drain_bytes=1000), big))
    assert calls == [] and too_big_to_drain[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    waits_for_continue = asyncio.run(run(Limits(), [*big, (b"expect", b"100-continue")]))
    assert calls == [] and len(waits_for_continue) == 3
    no_body = asyncio.run(run(Limits(), []))
    assert calls == [] and len(no_body) == 2
    capped = asyncio.run(run(Limits(drain_bytes=10, drain_seconds=5), [(b"transfer-encoding", b"chunked")]))
    assert calls == ["receive"] * 11 and capped[1] == {"type": "http.response.body", "body": b"no", "more_body": True}
