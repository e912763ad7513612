"""Serving throughput with dynamic batching on vs off, at 1 and 8 concurrent clients, side by side.

    python bench/serve.py [--model DIR] [--requests 64] [--rounds 5] [--threads 1]

Starts two `polymodal serve` processes on 127.0.0.1 (max batch 8, and max batch 1 = batching off),
sends Shapes World images (rendered in memory, beam 3) from 1 and from 8 concurrent clients to each
in turn, round after round, and writes requests/s, latencies and server CPU time per request to
docs/benchmarks.md (section "serve"). Loopback only; a bounded number of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import best_time, machine, shown, start_serve, write_section  # noqa: E402

from polymodal import load as load_model  # noqa: E402
from polymodal.assets import bundled_model_dir  # noqa: E402
from polymodal.data.shapes import render, sample_scene  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402

CLIENTS = (1, 8)


def shapes_pngs(n: int) -> list[bytes]:
    images = []
    for i in range(n):
        buffer = io.BytesIO()
        render(sample_scene(random.Random(1000 + i)), size=128).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def start_server(model: str, max_batch: int, threads: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    try:
        proc, url, _ = start_serve([model, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                                    "--threads", str(threads)])
    except RuntimeError as err:
        raise SystemExit(str(err)) from None
    return proc, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): robust to busy neighbours, unlike wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart_bodies(images: list[bytes]) -> tuple[list[bytes], str]:
    """Encode the uploads once, so that the clients spend their CPU on requests, not on encoding."""
    boundary = "polymodalbench"
    bodies = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"beam_size\"\r\n\r\n3\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
               f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
              for png in images]
    return bodies, f"multipart/form-data; boundary={boundary}"


async def load(url: str, bodies: list[bytes], ctype: str, clients: int, requests: int) -> dict[str, float]:
    """`clients` concurrent clients, each sending its share of `requests` one after another."""
    latencies: list[float] = []
    batches: list[int] = []

    async def client(c: int, n: int, http: httpx.AsyncClient) -> None:
        for i in range(c, n, clients):
            start = time.perf_counter()
            r = await http.post(url + "/v1/caption", content=bodies[i % len(bodies)], headers={"content-type": ctype})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            batches.append(r.json()["batch_size"])

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(c, 2 * clients, http) for c in range(clients)))  # warm-up, connections open
        latencies.clear()
        batches.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(c, requests, http) for c in range(clients)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"rps": requests / elapsed, "p50": 1000 * statistics.median(ordered),
            "p95": 1000 * ordered[int(0.95 * (len(ordered) - 1))], "batch": statistics.mean(batches)}


def model_ceiling(model_dir: str, pngs: list[bytes]) -> float:
    """generate() on 8 images one by one vs as one batch, in this process: what batching can gain at most."""
    torch.set_num_threads(1)
    model = load_model(model_dir).eval()
    images = model.preprocess(pngs[:8])
    cfg = GenerationConfig(strategy="beam", beam_size=3, max_len=model.cfg.decoder.max_len)
    singles = best_time(lambda: [model.generate(images[i:i + 1], cfg) for i in range(8)])
    return singles / best_time(lambda: model.generate(images, cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="captioner directory (default: the bundled model)")
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement at 8 clients")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each server")
    parser.add_argument("--rounds", type=int, default=5, help="back-to-back rounds; medians are reported")
    parser.add_argument("--max-wait-ms", type=float, default=25, help="the batching server's --max-wait-ms")
    args = parser.parse_args()
    model = str(args.model or bundled_model_dir())
    pngs = shapes_pngs(32)
    bodies, ctype = multipart_bodies(pngs)
    settings = {"on (max 8)": 8, "off": 1}
    servers = {label: start_server(model, max_batch, args.threads, args.max_wait_ms) for label, max_batch in settings.items()}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        # Both servers run side by side and take turns, round after round, so that a busy neighbour
        # on a shared machine slows both alike; each figure is the median round.
        for round_ in range(args.rounds):
            for clients in CLIENTS:
                n = args.requests if clients > 1 else max(16, args.requests // 3)
                for label, (proc, url) in servers.items():
                    cpu = cpu_seconds(proc.pid)
                    r = asyncio.run(load(url, bodies, ctype, clients, n))
                    r["cpu_ms"] = 1000 * (cpu_seconds(proc.pid) - cpu) / (n + 2 * clients)  # warm-up included
                    runs.setdefault((label, clients), []).append(r)
                    print(f"round {round_ + 1}: batching {label:>10}, {clients} client(s): {r['rps']:.1f} req/s, "
                          f"p50 {r['p50']:.0f} ms, p95 {r['p95']:.0f} ms, mean batch {r['batch']:.1f}, "
                          f"server CPU {r['cpu_ms']:.1f} ms/request")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    med = {key: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for key, rs in runs.items()}
    # Ratios are taken round by round (the two servers measured back to back), then the median.
    ratio = {(clients, m): statistics.median(a[m] / b[m] if m == "rps" else b[m] / a[m] for a, b in
                                             zip(runs["on (max 8)", clients], runs["off", clients], strict=True))
             for clients in CLIENTS for m in ("rps", "cpu_ms")}

    ceiling = model_ceiling(model, pngs)
    print(f"model alone: generate on 8 images batched is {ceiling:.1f}x faster than one by one")
    rows = []
    for clients in CLIENTS:
        on, off = med["on (max 8)", clients], med["off", clients]
        rows.append(f"| {clients} | {off['rps']:.0f} req/s, p50 {off['p50']:.0f} ms, {off['cpu_ms']:.1f} ms | "
                    f"{on['rps']:.0f} req/s, p50 {on['p50']:.0f} ms, {on['cpu_ms']:.1f} ms | {on['batch']:.1f} | "
                    f"{ratio[clients, 'rps']:.2f}x | **{ratio[clients, 'cpu_ms']:.2f}x** |")
    write_section("serve", f"""
## Serving: dynamic batching on vs off

`python bench/serve.py` — two `polymodal serve` processes on 127.0.0.1 (`{shown(model)}`, beam 3, one torch
thread each), one with dynamic batching (up to 8 requests per `generate`, waiting at most {args.max_wait_ms:g} ms and only for
requests on their way or expected from recent load) and one without, measured back to back for {args.rounds}
rounds. Clients send 128 px Shapes World PNGs as multipart uploads: {args.requests} requests from 8 clients,
{max(16, args.requests // 3)} from 1, after a warm-up. {machine()}; {os.cpu_count()} CPUs shared by both
servers, the clients and whatever else runs on the machine. Figures are medians over the rounds; ratios are
taken round by round. "CPU" is the server process's CPU time per request (from /proc): it does not depend on
what else the machine runs, while wall-clock throughput on a busy shared machine does.

| clients | batching off: throughput, latency, CPU | batching on: throughput, latency, CPU | mean batch | throughput on/off | requests per CPU-second on/off |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The ceiling, measured in the same run: `generate` on 8 images at once is **{ceiling:.1f}x** faster than on the
same 8 one by one. The image encoder (a CNN, compute-bound) costs the same per image in a batch; what
batching saves is the decoder's per-step overhead. HTTP parsing, image decoding and JSON cost the same per
request either way, so the end-to-end gain stays below that ceiling. With one client nothing is batched and
nothing waits: a lone client never waits for a batch to fill.
""")


if __name__ == "__main__":
    main()
