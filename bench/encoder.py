"""Image encoder throughput: polymodal's encoder vs plain torchvision eager on the same batch, the data-path
options (channels_last, bf16 autocast, torch.compile) and a batch-size curve.

    python bench/encoder.py [--arch resnet18] [--size 224] [--batch 16] [--no-compile]

Records sections "encoder" and "compile_train" (docs/results/bench_*.json, docs/benchmarks.md) and writes
docs/bench_encoder_batch.png.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _history  # noqa: E402
from _report import interleaved_best, load_average, machine, peak_rss_mb, save_plot, today, write_section  # noqa: E402

from polymodal.config import EncoderConfig  # noqa: E402
from polymodal.nn.encoders import build_encoder  # noqa: E402

BATCHES = (1, 2, 4, 8, 16, 32)
SPEED_UP = {"format": ".2f", "unit": "x"}


def encoders(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """polymodal's frozen encoder and the same torchvision network cut before its pooling, same weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = build_encoder(EncoderConfig(name=arch, freeze=True)).eval()
    net = getattr(torchvision.models, arch)(weights=None)
    plain = torch.nn.Sequential(*list(net.children())[:-2]).eval()  # conv1 .. layer4
    ours_state = ours.state_dict()
    plain.load_state_dict({k: ours_state[_ours_key(k)] for k in plain.state_dict()})
    return ours, plain


def _ours_key(plain_key: str) -> str:
    """'4.0.conv1.weight' (Sequential index) -> 'stages.1.0.conv1.weight' (stem = stage 0)."""
    index, rest = plain_key.split(".", 1)
    i = int(index)
    return f"stages.0.{i}.{rest}" if i < 4 else f"stages.{i - 3}.{rest}"


def timed(fn: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fn(x)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, more threads stall on busy cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, plain = encoders(args.arch)
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        same = torch.allclose(ours(x), plain(x).flatten(2).transpose(1, 2), atol=1e-4)

    variants = {"torchvision eager": timed(plain, x), "polymodal": timed(ours, x)}
    ours_cl = build_encoder(EncoderConfig(name=args.arch, freeze=True)).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl.to(memory_format=torch.channels_last)
    variants["polymodal, channels_last"] = timed(ours_cl, x.contiguous(memory_format=torch.channels_last))
    variants["polymodal, bf16 autocast"] = timed(ours, x, autocast=True)
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(ours)
        start = time.perf_counter()
        timed(compiled, x)()
        compile_s = time.perf_counter() - start
        variants["polymodal, torch.compile"] = timed(compiled, x)
    times = interleaved_best(variants, repeats=3)
    base = times["torchvision eager"]
    rows = "\n".join(f"| {name} | {args.batch / t:.1f} | {t * 1000:.0f} ms | **{base / t:.2f}x** |"
                     for name, t in times.items())
    for name, t in times.items():
        print(f"{name}: {args.batch / t:.1f} img/s ({base / t:.2f}x torchvision)")

    curve = {}
    for b in BATCHES:
        xb = torch.randn(b, 3, args.size, args.size)
        t = interleaved_best({"torchvision": timed(plain, xb), "polymodal": timed(ours, xb)}, repeats=3)
        curve[b] = (b / t["torchvision"], b / t["polymodal"])
        print(f"batch {b}: torchvision {curve[b][0]:.1f} img/s, polymodal {curve[b][1]:.1f} img/s")
    plot(curve, args)
    if not args.no_compile:
        training_compile()
    curve_rows = "\n".join(f"| {b} | {tv:.1f} | {pm:.1f} | {pm / tv:.2f}x |" for b, (tv, pm) in curve.items())
    speed_ups = {name: base / t for name, t in times.items() if name != "torchvision eager"}
    compile_note = (f"`torch.compile` took {compile_s:.0f} s to compile (first call) on this machine."
                    if compile_s is not None else "`torch.compile` not measured (`--no-compile`).")
    write_section("encoder", f"""
## Image encoder: polymodal vs plain torchvision, data-path options, batch size

`python bench/encoder.py` ({today()}) — {args.arch} (random init, frozen, eval mode) on a batch of
{args.batch} random {args.size} px images, `torch.inference_mode`; "torchvision eager" is the torchvision
network cut before its pooling with the same weights (outputs equal: {'yes' if same else 'NO'}). Best of 3
interleaved runs, {machine()}, {load_average()} (a shared 2-core machine: absolute numbers are noisy, the
ratios are measured side by side). Peak RSS {peak_rss_mb():.0f} MB.

| encoder | images/s | per batch | vs torchvision eager |
|---|---|---|---|
{rows}

{compile_note} What the trainer keeps: `train.channels_last`, `train.amp` (bf16 autocast) and
`train.compile` are options, off by default; turn one on where its row above says it pays on your machine
(on a GPU, bf16 and channels_last are the usual wins; see bench/gpu.sh).

Batch-size curve (best of 3; plot: [bench_encoder_batch.png](bench_encoder_batch.png)):

| batch | torchvision images/s | polymodal images/s | ratio |
|---|---|---|---|
{curve_rows}
""", figures=speed_ups, described={k: {"what": "images/s vs torchvision eager, same batch", **SPEED_UP} for k in speed_ups})


def compile_notes() -> str:
    """What was measured by hand about compiling (kept under "by_hand" in bench_compile_train.json)."""
    hand = _history.load_history("compile_train").get("by_hand", {}).get("figures", {})
    cold = hand.get("compiled first step, cold cache (s)")
    notes = [f"The compiled first step includes compiling (less when torch's on-disk compile cache is warm from "
             f"an earlier run{f': {cold:g} s cold on this machine' if cold else ''}). `train.compile` compiles only "
             f"the image encoder, whose shapes are fixed."]
    keys = ("whole captioner compiled: first step (s)", "whole captioner compiled: steps/s", "eager: steps/s")
    if all(k in hand for k in keys):
        first, rate, eager = (hand[k] for k in keys)
        notes.append(f"Compiling the whole captioner was measured too (by hand, same machine): every new caption "
                     f"length recompiles, {first:g} s for the first step and {rate:g} against {eager:g} steps/s "
                     f"eager, so it is not offered.")
    return "\n".join(notes)


def training_compile(steps: int = 10) -> None:
    """`train.compile` (the encoder compiled) vs eager: Trainer.train_step of configs/attention_lstm.yaml."""
    import dataclasses
    import itertools

    from polymodal.config import load_config
    from polymodal.data.datasets import CaptionDataset, collate_captions, load_split
    from polymodal.models.captioner import Captioner
    from polymodal.text.tokenizer import WordTokenizer
    from polymodal.train.trainer import Trainer

    cfg = load_config("configs/attention_lstm.yaml", ["data.n=400", "train.warmup_steps=1"])
    records = load_split(cfg.data, "train")
    tokenizer = WordTokenizer.build(c for r in records for c in r.captions)
    data = CaptionDataset(records, tokenizer, cfg.model.image_size, cfg.data.max_len, progress=False)
    rates, first = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(Captioner(cfg.model, tokenizer), data, dataclasses.replace(cfg.train, compile=compiled),
                          collate=collate_captions, save_model=lambda _: None, progress=False)
        batches = [dict(b) for b in itertools.islice(trainer._loader(), steps + 2)]
        for b in batches:
            b.pop("skipped")
        start = time.perf_counter()
        trainer.train_step(batches[0])
        first[compiled] = time.perf_counter() - start
        trainer.train_step(batches[1])
        start = time.perf_counter()
        for b in batches[2:]:
            trainer.train_step(b)
        rates[compiled] = steps / (time.perf_counter() - start)
        print(f"train.compile={compiled}: first step {first[compiled]:.1f} s, {rates[compiled]:.2f} steps/s")
    write_section("compile_train", f"""
## Training with `train.compile` (the image encoder compiled) vs eager

`python bench/encoder.py` ({today()}) — `Trainer.train_step` of `configs/attention_lstm.yaml` (small CNN
trained, 64 px, attention LSTM, batch {cfg.train.batch_size}), {steps} steps after the first two, {machine()},
{load_average()}.

| training | first step | steps/s | speed-up |
|---|---|---|---|
| eager | {first[False]:.1f} s | {rates[False]:.2f} | 1.00x |
| `train.compile: true` | {first[True]:.1f} s (compiling) | {rates[True]:.2f} | **{rates[True] / rates[False]:.2f}x** |

{compile_notes()}
""", figures={"train.compile speed-up": rates[True] / rates[False], "compiled first step (s)": first[True]},
        described={"train.compile speed-up": {"what": "training steps/s, image encoder compiled vs eager", **SPEED_UP},
                   "compiled first step (s)": {"what": "first step with train.compile", "format": ".1f", "unit": " s"}})


def plot(curve: dict[int, tuple[float, float]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    sizes = list(curve)
    ax.plot(sizes, [curve[b][0] for b in sizes], "o-", label="torchvision eager")
    ax.plot(sizes, [curve[b][1] for b in sizes], "s--", label="polymodal encoder")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"{args.arch}, {args.size} px, CPU ({torch.get_num_threads()} threads)")
    ax.legend()
    save_plot(fig, "bench_encoder_batch.png")


if __name__ == "__main__":
    main()
