"""The server under load: concurrent clients, valid and invalid requests, memory, limits, shutdown.

    OMP_NUM_THREADS=1 python bench/load.py [--clients 50] [--seconds 60] [--model DIR] [--write]

Starts `polymodal serve` on 127.0.0.1 (1 MB body limit, 10 s timeout, one torch thread) and runs,
in order: `clients` concurrent clients for `seconds`, each sending a weighted mix of valid and
invalid requests one after another (every kind has one expected status; anything else, and any
5xx, is counted); the server's RSS sampled twice a second (flat after a warm-up of a fifth of the
run); an upload declaring 100 MB (refused from its Content-Length, before any body is sent); a
chunked 128 MB upload without Content-Length (refused once the limit is passed, then drained up to
the lingering-close cap of 64 MB: the bytes the server took before it closed are counted); a client
that trickles its body (408 after the timeout);
then graceful shutdown: SIGTERM while requests are in flight, every one of them must complete.
`--write` puts the figures into docs/reliability.md. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import start_serve  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
START, END = "<!-- load:start -->", "<!-- load:end -->"
MAX_MB, TIMEOUT_S = 1.0, 10.0


def png(size: tuple[int, int] = (96, 96), seed: int = 0) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image.paste((rng.randrange(256), 40, 40), (20, 20, 60, 60))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def multipart(fields: dict[str, str], image: bytes | None, name: str = "a.png") -> tuple[bytes, dict[str, str]]:
    boundary = "polymodalload"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def request_mix() -> list[tuple[str, int, int, dict]]:
    """(kind, weight, expected status, httpx request arguments), built once so clients only send."""
    good, limit = png(), int(MAX_MB * 2**20)
    body, headers = multipart({"beam_size": "3"}, good)
    oversize, _ = multipart({}, b"\x89PNG\r\n\x1a\n" + b"\x00" * limit)

    async def chunks():  # no Content-Length: the server must count while it reads
        for _ in range(12):
            yield b"\x00" * 131_072

    mix = [
        ("caption multipart", 30, 200, {"method": "POST", "url": "/v1/caption", "content": body, "headers": headers}),
        ("caption json", 10, 200, {"method": "POST", "url": "/v1/caption",
                                   "json": {"image": base64.b64encode(png(seed=1)).decode(), "nbest": 2}}),
        ("models", 5, 200, {"method": "GET", "url": "/v1/models"}),
        ("healthz", 5, 200, {"method": "GET", "url": "/healthz"}),
        ("truncated png", 8, 422, {"method": "POST", "url": "/v1/caption",
                                   "content": multipart({}, good[: len(good) // 2])[0], "headers": headers}),
        ("html named .png", 5, 415, {"method": "POST", "url": "/v1/caption",
                                     "content": multipart({}, b"<html><body>hi</body></html>")[0], "headers": headers}),
        ("bad option", 5, 422, {"method": "POST", "url": "/v1/caption",
                                "content": multipart({"beam_size": "lots"}, good)[0], "headers": headers}),
        ("unknown field", 3, 422, {"method": "POST", "url": "/v1/caption", "json": {"image": "aGk=", "beam": 2}}),
        ("pixel bomb", 4, 413, {"method": "POST", "url": "/v1/caption", "content": multipart({}, png_bomb())[0],
                                "headers": headers}),
        ("over the limit", 2, 413, {"method": "POST", "url": "/v1/caption", "content": oversize, "headers": headers}),
        ("over the limit, chunked", 2, 413, {"method": "POST", "url": "/v1/caption", "content": chunks,
                                             "headers": headers}),
        ("empty body", 3, 400, {"method": "POST", "url": "/v1/caption", "content": b"",
                                "headers": {"content-type": "application/json"}}),
        ("broken json", 3, 400, {"method": "POST", "url": "/v1/caption", "content": b'{"image": ',
                                 "headers": {"content-type": "application/json"}}),
        ("unknown route", 3, 404, {"method": "GET", "url": "/v2/everything"}),
        ("wrong method", 2, 405, {"method": "DELETE", "url": "/v1/caption"}),
        ("no index loaded", 2, 404, {"method": "POST", "url": "/v1/retrieve", "json": {"text": "a red circle"}}),
    ]
    return mix


# ----------------------------------------------------------------------------- the server
def start_server(model: str | None, timeout_s: float = TIMEOUT_S) -> tuple[subprocess.Popen, str, int]:
    args = [*([model] if model else []), "--max-mb", str(MAX_MB), "--timeout", str(timeout_s), "--threads", "1"]
    return start_serve(args, env={**os.environ, "OMP_NUM_THREADS": "1"})


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RSSSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.stop = pid, every, [], threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - start, rss_mb(self.pid)))
            self.stop.wait(self.every)


# ----------------------------------------------------------------------------- the load
async def run_load(url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    mix = request_mix()
    kinds, weights = [m[0] for m in mix], [m[1] for m in mix]
    spec = {m[0]: (m[2], m[3]) for m in mix}
    statuses: dict[str, Counter] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    errors: Counter = Counter()
    deadline = time.monotonic() + seconds

    async def client(c: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + c)
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            args = dict(spec[kind][1])
            if callable(args.get("content")):
                args["content"] = args["content"]()
            start = time.perf_counter()
            try:
                r = await http.request(**args)
                statuses[kind][r.status_code] += 1
            except httpx.HTTPError as err:  # a refused upload must still read its 413: errors count as unexpected
                statuses[kind][type(err).__name__] += 1
                errors[type(err).__name__] += 1
            latency[kind].append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    return summarize(spec, statuses, latency, seconds, clients)


def summarize(spec: dict, statuses: dict[str, Counter], latency: dict[str, list[float]], seconds: float,
              clients: int) -> dict:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1) if ordered else 0.0

    every = [v for values in latency.values() for v in values]
    valid = latency["caption multipart"] + latency["caption json"]
    unexpected = {k: {str(s): n for s, n in c.items() if s != spec[k][0]} for k, c in statuses.items()}
    return {"clients": clients, "seconds": seconds, "requests": len(every),
            "rps": round(len(every) / seconds, 1),
            "server_errors_5xx": sum(n for c in statuses.values() for s, n in c.items() if isinstance(s, int) and s >= 500),
            "unexpected": {k: v for k, v in unexpected.items() if v},
            "p50_ms": pct(every, 0.5), "p99_ms": pct(every, 0.99),
            "caption_p50_ms": pct(valid, 0.5), "caption_p99_ms": pct(valid, 0.99), "captions": len(valid),
            "by_kind": {k: {str(s): n for s, n in sorted(c.items(), key=str)} for k, c in sorted(statuses.items())}}


# ----------------------------------------------------------------------------- limits, timeouts, shutdown
def _response(sock: socket.socket, timeout: float) -> tuple[int, float]:
    """The status of the first response line on `sock`, and how long it took to come."""
    sock.settimeout(timeout)
    start, data = time.perf_counter(), b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else -1, time.perf_counter() - start


def declared_oversize(port: int) -> dict:
    """Headers declare 100 MB, the body never comes: the answer must not wait for it."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 104857600\r\n\r\n" + b"\x00" * 1024)
        status, seconds = _response(sock, 10)
    return {"status": status, "answered_in_s": round(seconds, 3), "body_bytes_sent": 1024}


def streamed_oversize(port: int, total_mb: int = 128) -> dict:
    """A chunked body without Content-Length, larger than the limit and the drain cap (64 MB) together:
    count what the server took (read before the 413, then drained) before it closed."""
    sent, chunk = 0, b"\x00" * 65_536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sock.settimeout(10)
        try:
            while sent < total_mb * 2**20:
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server answered, drained up to its cap and closed: it stopped reading
        try:
            status, _ = _response(sock, 10)
        except (ConnectionResetError, TimeoutError):
            status = -1
    return {"status": status, "offered_mb": total_mb, "sent_before_close_mb": round(sent / 2**20, 2)}


def slow_body(port: int, timeout_s: float = TIMEOUT_S) -> dict:
    """A client that sends its declared 2 kB body one byte a second: 408 after the server's timeout."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2048\r\n\r\n{")
        start = time.perf_counter()
        sock.setblocking(False)
        status = -1
        while time.perf_counter() - start < timeout_s + 10:
            try:
                data = sock.recv(4096)  # read first: the reply may already be waiting
                if data.startswith(b"HTTP/"):
                    status = int(data.split(b" ", 2)[1])
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            # Trickle only until just before the deadline: a byte still unread when the server closes
            # after its 408 makes the close a reset, which can discard the 408 before it is read.
            if time.perf_counter() - start < timeout_s - 1.0:
                try:
                    sock.send(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    break
            time.sleep(0.2 if time.perf_counter() - start >= timeout_s - 1.0 else 1.0)
    return {"status": status, "after_s": round(time.perf_counter() - start, 1), "timeout_s": timeout_s}


async def graceful_shutdown(proc: subprocess.Popen, url: str, in_flight: int = 16) -> dict:
    """SIGTERM while `in_flight` captions are being served: all must complete; then the process exits."""
    body, headers = multipart({"beam_size": "3"}, png(seed=7))
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        tasks = [asyncio.create_task(http.post("/v1/caption", content=body, headers=headers)) for _ in range(in_flight)]
        await asyncio.sleep(0.15)  # the requests are sent and being processed
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    codes = Counter(r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in results)
    start = time.perf_counter()
    exit_code = await asyncio.to_thread(proc.wait, 60)
    try:
        httpx.get(url + "/healthz", timeout=2)
        refused_after = False
    except httpx.HTTPError:
        refused_after = True
    return {"in_flight": in_flight, "statuses": {str(k): v for k, v in codes.items()}, "exit_code": exit_code,
            "exit_after_s": round(time.perf_counter() - start, 2), "new_connections_refused": refused_after}


# ----------------------------------------------------------------------------- the run
def rss_report(samples: list[tuple[float, float]], seconds: float) -> dict:
    warm = [mb for t, mb in samples if t >= seconds / 5]
    if len(warm) < 2:
        return {"samples": len(samples)}
    half = len(warm) // 2
    first, second = statistics.mean(warm[:half]), statistics.mean(warm[half:])
    return {"samples": len(samples), "start_mb": round(samples[0][1], 1), "after_warmup_mb": round(warm[0], 1),
            "end_mb": round(warm[-1], 1), "max_after_warmup_mb": round(max(warm), 1),
            "growth_second_half_vs_first_mb": round(second - first, 1)}


def run(clients: int, seconds: float, model: str | None, timeout_s: float = TIMEOUT_S) -> dict:
    proc, url, port = start_server(model, timeout_s)
    sampler = RSSSampler(proc.pid)
    sampler.start()
    try:
        result = asyncio.run(run_load(url, clients, seconds))
        sampler.stop.set()
        sampler.join()
        result["rss"] = rss_report(sampler.samples, seconds)
        result["declared_oversize"] = declared_oversize(port)
        result["streamed_oversize"] = streamed_oversize(port)
        result["slow_body"] = slow_body(port, timeout_s)
        result["rss"]["after_probes_mb"] = round(rss_mb(proc.pid), 1)
        result["shutdown"] = asyncio.run(graceful_shutdown(proc, url))
    finally:
        if proc.poll() is None:
            proc.kill()
    return result


def markdown(r: dict, command: str) -> str:
    rss, shut = r["rss"], r["shutdown"]
    lines = [START, "", f"`{command}` ({time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores "
             f"shared with other jobs, load average {os.getloadavg()[0]:.1f}):", "",
             "| figure | value |", "|---|---|",
             f"| clients x seconds | {r['clients']} x {r['seconds']:g} s |",
             f"| requests (valid captions) | {r['requests']} ({r['captions']}), {r['rps']} req/s |",
             f"| 5xx answers | **{r['server_errors_5xx']}** |",
             f"| answers other than the expected status | {sum(sum(v.values()) for v in r['unexpected'].values())} |",
             f"| latency p50 / p99, all requests | {r['p50_ms']} / {r['p99_ms']} ms |",
             f"| latency p50 / p99, captions (beam 3) | {r['caption_p50_ms']} / {r['caption_p99_ms']} ms |",
             f"| server RSS after warm-up -> end (max) | {rss.get('after_warmup_mb')} -> {rss.get('end_mb')} MB "
             f"({rss.get('max_after_warmup_mb')}); second half vs first: {rss.get('growth_second_half_vs_first_mb'):+} MB |",
             f"| 100 MB declared in Content-Length | {r['declared_oversize']['status']} after "
             f"{r['declared_oversize']['answered_in_s']} s, 1 kB of body sent |",
             f"| {r['streamed_oversize']['offered_mb']} MB chunked, no Content-Length | "
             f"{r['streamed_oversize']['status']}; the client got {r['streamed_oversize']['sent_before_close_mb']} MB "
             f"out before the server closed |",
             f"| body trickled 1 byte/s | {r['slow_body']['status']} after {r['slow_body']['after_s']} s "
             f"(timeout {r['slow_body']['timeout_s']:g} s) |",
             f"| SIGTERM with {shut['in_flight']} captions in flight | {shut['statuses']}, exit code "
             f"{shut['exit_code']} after {shut['exit_after_s']} s, new connections refused: "
             f"{shut['new_connections_refused']} |", "",
             "<details><summary>Statuses by request kind</summary>", "", "```json",
             json.dumps(r["by_kind"], indent=1), "```", "", "</details>", "", END]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if START not in doc:
        doc = doc.rstrip("\n") + f"\n\n{START}\n{END}\n"
    head, rest = doc.split(START, 1)
    DOC.write_text(head + text + rest.split(END, 1)[1], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled captioner)")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/reliability.md")
    args = parser.parse_args()
    result = run(args.clients, args.seconds, args.model)
    print(json.dumps(result, indent=1))
    if args.write:
        command = f"OMP_NUM_THREADS=1 python bench/load.py --clients {args.clients} --seconds {args.seconds:g}"
        write_doc(markdown(result, command))
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
