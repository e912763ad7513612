"""Data-parallel training on CPU: `torchrun --nproc_per_node=2` (gloo) vs one process, same global batch.

    python bench/ddp.py [--steps 30] [--batch 32] [--rounds 3]

Runs `polymodal train configs/attention_lstm.yaml` three ways with the same global batch and steps:
one process with 1 thread, one process with 2 threads (the whole machine), and two DDP processes with
1 thread each. Throughput is taken from the run's own summary (`seconds` of the training loop).
Writes section "ddp" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import free_port, load_average, today, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def train(procs: int, threads: int, steps: int, batch: int, out: Path) -> dict:
    """Run one training; returns its summary (rank 0's)."""
    overrides = [f"train.steps={steps}", f"train.batch_size={batch // procs}", "train.eval_every=0",
                 "train.checkpoint_every=0", "train.log_every=10", "data.n=1000", f"train.out_dir={out}"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                 "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "polymodal"]
                if procs > 1 else [sys.executable, "-m", "polymodal"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([*launcher, "train", "configs/attention_lstm.yaml", *overrides, "--quiet"], cwd=ROOT,
                            env=env, capture_output=True, text=True, check=True)
    text = result.stdout
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--rounds", type=int, default=3, help="alternating 1- and 2-process runs; best kept")
    args = parser.parse_args()
    runs: dict[str, float] = {}
    rss: dict[str, float] = {}
    plan = [("1 process, 2 threads", 1, 2)] + [("1 process, 1 thread", 1, 1),
                                               ("2 DDP processes (gloo), 1 thread each", 2, 1)] * args.rounds
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for i, (label, procs, threads) in enumerate(plan):  # 1 vs 2 processes alternate: best of the rounds
            summary = train(procs, threads, args.steps, args.batch, Path(tmp) / f"run{i}")
            rate = args.steps * args.batch / summary["seconds"]
            runs[label] = max(runs.get(label, 0.0), rate)
            # The largest child so far (the launcher's workers count as its children's children).
            rss[label] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"{label}: {rate:.1f} samples/s ({summary['seconds']} s, loss {summary['final_loss']:.3f})")
    base = runs["1 process, 1 thread"]
    rows = "\n".join(f"| {label} | {rate:.1f} | {rate / base:.2f}x | {rss[label]:.0f} MB |"
                     for label, rate in runs.items())
    ddp, whole = runs["2 DDP processes (gloo), 1 thread each"], runs["1 process, 2 threads"]
    write_section("ddp", f"""
## Data-parallel training on CPU: torchrun (gloo) vs one process

`python bench/ddp.py` ({today()}) — `polymodal train configs/attention_lstm.yaml` (small CNN + attention
LSTM, 64 px, Shapes World, `data.n=1000`), {args.steps} steps of global batch {args.batch} each way; the
DDP run is `torchrun --nproc_per_node=2 -m polymodal train ...` with `train.batch_size={args.batch // 2}` per
process. Samples/s = steps x global batch / the training loop's seconds (its summary); the 1- and
2-process runs alternate {args.rounds} times and each keeps its best (the 2-thread run once), {load_average()}
at the end: a shared 2-core machine, where other jobs take cores from both sides.

| run | samples/s | vs 1 process, 1 thread | largest process so far (peak RSS) |
|---|---|---|---|
{rows}

Two DDP processes on two cores run at {ddp / base:.2f}x one single-threaded process (ideal 2x), and at
{ddp / whole:.2f}x one process that uses both cores through intra-op threads. See docs/scaling.md for
what this says about many GPUs.
""", figures={"2 DDP processes vs 1 process, 1 thread": ddp / base, "2 DDP processes vs 1 process, 2 threads": ddp / whole},
        series="best of 3 alternating",
        described={"2 DDP processes vs 1 process, 1 thread": {"what": "samples/s, torchrun 2 processes (gloo) vs 1 "
                                                              "process", "format": ".2f", "unit": "x"},
                   "2 DDP processes vs 1 process, 2 threads": {"what": "samples/s, torchrun 2 processes vs 1 process "
                                                               "on both cores", "format": ".2f", "unit": "x"}})


if __name__ == "__main__":
    main()
