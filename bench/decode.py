"""Decoding benchmarks, each measured side by side in one run on Shapes World test images.

- decode: batched beam search vs a per-image beam loop (the bundled attention-LSTM captioner).
- decode_cost: batched beam cost vs beam size and caption length (plotted).
- kv_cache: prefix-LM generation with the KV cache vs full recomputation of the sequence every step.

    python bench/decode.py [--model DIR] [--images 64] [--sections decode,kv_cache]
                           [--prefix-model DIR] [--tokens 30]

Writes the tables to docs/benchmarks.md (sections "decode", "decode_cost" and "kv_cache").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import best_time, interleaved_best, machine, peak_rss_mb, save_plot, shown, write_section  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.assets import ATTENTION_LSTM, bundled_model_dir  # noqa: E402
from polymodal.config import DataConfig  # noqa: E402
from polymodal.data.datasets import ImageDataset, collate_captions, load_split  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402

# The code measured: bump when a change makes the runs before it incomparable (bench/_history.py).
SERIES = "BeamBatch"
COMMAND = "python bench/decode.py --sections {}"
SPEED_UP = {"format": ".1f", "unit": "x"}


def shapes_test_images(n: int, size: int) -> torch.Tensor:
    records = load_split(DataConfig(format="shapes"), "test")[:n]
    return collate_captions([ImageDataset(records, size)[i] for i in range(len(records))])["images"]


def decode_section(args: argparse.Namespace) -> None:
    model = load(args.model or bundled_model_dir(ATTENTION_LSTM)).eval()
    images = shapes_test_images(args.images, model.cfg.image_size)

    rows = []
    for beam in (3, 5):
        cfg = GenerationConfig(strategy="beam", beam_size=beam, max_len=model.cfg.decoder.max_len)
        # Interleaved: on a busy machine a load spike then hits one run of each, not one column.
        times = interleaved_best({"loop": lambda cfg=cfg: [model.generate(images[i:i + 1], cfg)
                                                           for i in range(len(images))],
                                  "batched": lambda cfg=cfg: model.generate(images, cfg)}, repeats=3)
        per_image, batched = times["loop"], times["batched"]
        same = [h[0].tokens for h in model.generate(images, cfg)] == \
            [model.generate(images[i:i + 1], cfg)[0][0].tokens for i in range(len(images))]
        rows.append((beam, per_image, batched, same))
        print(f"beam {beam}: per-image loop {per_image:.3f}s, batched {batched:.3f}s, "
              f"speed-up {per_image / batched:.1f}x, identical captions: {same}")
    greedy = best_time(lambda: model.generate(images, GenerationConfig(strategy="greedy")))

    n = len(images)
    table = "\n".join(f"| beam {b} | {p:.3f} s ({n / p:.0f} img/s) | {t:.3f} s ({n / t:.0f} img/s) | "
                      f"**{p / t:.1f}x** | {'yes' if s else 'NO'} |" for b, p, t, s in rows)
    write_section("decode", f"""
## Decoding: batched beam search vs a per-image loop

`python bench/decode.py` — {n} Shapes World test images, the bundled attention-LSTM captioner,
{machine()}, best of 3 interleaved runs. Both columns run the same `generate.beam_search`; the loop calls it once
per image, the batched run once for all {n} ({n} x beam rows in one step).

| decoding | per-image loop | batched | speed-up | same captions |
|---|---|---|---|---|
{table}

Greedy, batched: {greedy:.3f} s ({n / greedy:.0f} img/s). Peak RSS {peak_rss_mb():.0f} MB.
""", figures={f"beam {b}": p / t for b, p, t, _ in rows}, series=SERIES, command=COMMAND.format("decode"),
                  described={f"beam {b}": {"what": f"{n} images: batched vs per-image loop", **SPEED_UP} for b, *_ in rows})


def decode_cost_section(args: argparse.Namespace) -> None:
    """Batched beam search cost as the caption length and the beam grow (min_len = max_len fixes the length)."""
    model = load(args.model or bundled_model_dir(ATTENTION_LSTM)).eval()
    n = min(args.images, 16)
    images = shapes_test_images(n, model.cfg.image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine, 2 intra-op threads stall whenever one core is taken

    def run(beam: int, length: int) -> Callable[[], object]:
        strategy = "greedy" if beam == 1 else "beam"
        cfg = GenerationConfig(strategy=strategy, beam_size=beam, max_len=length, min_len=length)
        return lambda: model.generate(images, cfg)

    points = [(beam, 16) for beam in (1, 2, 3, 5, 8)] + [(3, length) for length in (8, 24, 32)]
    # Interleaved, best of 10: on a busy machine a load spike then hits one run of each point, not one point.
    times = interleaved_best({f"{b},{t}": run(b, t) for b, t in points}, repeats=10)
    by_beam = {b: times[f"{b},16"] for b in (1, 2, 3, 5, 8)}
    by_length = {t: times[f"3,{t}"] for t in (8, 16, 24, 32)}
    described = machine()
    torch.set_num_threads(threads)
    for beam, t in by_beam.items():
        print(f"beam {beam}, 16 tokens: {t * 1000:.0f} ms")
    for length, t in by_length.items():
        print(f"beam 3, {length} tokens: {t * 1000:.0f} ms")
    plot_decode_cost(by_beam, by_length, n)
    beam_rows = "\n".join(f"| {b} | {t * 1000:.0f} | {t / by_beam[1]:.1f}x | {n * 16 / t:.0f} |" for b, t in by_beam.items())
    length_rows = "\n".join(f"| {length} | {t * 1000:.0f} | {t / by_length[8]:.1f}x | {t / length * 1000:.1f} |"
                             for length, t in by_length.items())
    write_section("decode_cost", f"""
## Decoding cost vs beam size and caption length

`python bench/decode.py --sections decode_cost` — the bundled attention-LSTM captioner, {n} Shapes World
test images in one batch, every caption forced to the given length (`min_len = max_len`), {described},
best of 10 interleaved runs. Plot: [bench_decode_cost.png](bench_decode_cost.png).

| beam (16 tokens) | time (ms) | vs greedy | tokens/s (best hypothesis) |
|---|---|---|---|
{beam_rows}

| tokens (beam 3) | time (ms) | vs 8 tokens | ms per token |
|---|---|---|---|
{length_rows}

Time is a fixed part (encoding the {n} images, setting up the beams) plus one decoder step over
batch x beam rows per token: from 8 to 32 tokens each extra token costs
{(by_length[32] - by_length[8]) / 24 * 1000:.2f} ms at beam 3. Beam 8 costs {by_beam[8] / by_beam[1]:.1f}x greedy,
not 8x: the batch x beam rows of a step share one matrix product. Peak RSS {peak_rss_mb():.0f} MB.
""", figures={"beam 8 vs greedy": by_beam[8] / by_beam[1],
              "ms per extra token, beam 3": (by_length[32] - by_length[8]) / 24 * 1000},
        command=COMMAND.format("decode_cost"))


def plot_decode_cost(by_beam: dict[int, float], by_length: dict[int, float], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 2.8))
    left.plot(list(by_beam), [t * 1000 for t in by_beam.values()], "o-")
    left.set_xlabel("beam size (16 tokens)")
    left.set_ylabel(f"ms for {n} images")
    right.plot(list(by_length), [t * 1000 for t in by_length.values()], "s-")
    right.set_xlabel("caption length (beam 3)")
    fig.suptitle("batched beam search cost, CPU")
    save_plot(fig, "bench_decode_cost.png")


def prefix_model(path: str | None) -> tuple[torch.nn.Module, str]:
    """A trained prefix LM, or (without one) an untrained one of configs/prefix_lm.yaml's sizes."""
    if path and Path(path).exists():
        return load(path).eval(), f"`{shown(path)}`"
    from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
    from polymodal.models.prefix_lm import PrefixLM
    from polymodal.text.tokenizer import WordTokenizer

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(46)]
    cfg = ModelConfig(encoder=EncoderConfig(width=32),
                      decoder=DecoderConfig(hidden_dim=128, num_layers=3, num_heads=4, max_positions=64))
    return PrefixLM(cfg, WordTokenizer(words)).eval(), "an untrained prefix LM of configs/prefix_lm.yaml's sizes"


def kv_cache_section(args: argparse.Namespace) -> None:
    model, name = prefix_model(args.prefix_model)
    n, tokens = min(args.images, 16), args.tokens
    images = shapes_test_images(n, model.cfg.image_size)
    visual = model.visual_tokens(images[:1]).shape[1]
    rows = []
    # min_len = max_len: every caption is exactly `tokens` long, so both sides do the same work.
    for label, batch, cfg in (
            ("greedy, 1 image", images[:1], GenerationConfig(strategy="greedy", max_len=tokens, min_len=tokens)),
            (f"greedy, {n} images", images, GenerationConfig(strategy="greedy", max_len=tokens, min_len=tokens)),
            (f"beam 3, {n} images", images, GenerationConfig(strategy="beam", beam_size=3, max_len=tokens,
                                                            min_len=tokens))):
        times = interleaved_best({
            "cached": lambda b=batch, c=cfg: model.generate(b, c, use_cache=True),
            "full": lambda b=batch, c=cfg: model.generate(b, c, use_cache=False)})
        same = [h[0].tokens for h in model.generate(batch, cfg)] == \
            [h[0].tokens for h in model.generate(batch, cfg, use_cache=False)]
        produced = len(batch) * tokens
        rows.append((label, produced / times["full"], produced / times["cached"], times["full"] / times["cached"], same))
        print(f"{label}: full {produced / times['full']:.0f} tok/s, cached {produced / times['cached']:.0f} tok/s, "
              f"speed-up {times['full'] / times['cached']:.1f}x, identical: {same}")
    table = "\n".join(f"| {label} | {f:.0f} | {c:.0f} | **{r:.1f}x** | {'yes' if s else 'NO'} |"
                      for label, f, c, r, s in rows)
    write_section("kv_cache", f"""
## Prefix-LM generation: KV cache vs full recomputation

`python bench/decode.py --sections kv_cache` — {name}, {visual} visual tokens + {tokens} generated
tokens per caption (`min_len = max_len = {tokens}`), Shapes World test images, {machine()}, best of 5
interleaved runs. Without the cache every step runs the LM over the whole sequence so far
(`PrefixLM.step_uncached`); with it, one query per layer against the cached keys and values.

| decoding | full recomputation (tokens/s) | KV cache (tokens/s) | speed-up | same tokens |
|---|---|---|---|---|
{table}
""", figures={label: r for label, _, _, r, _ in rows}, series=f"{SERIES}, {name.strip('`')}",
        command=COMMAND.format("kv_cache"),
        described={label: {"what": "tokens/s with vs without the KV cache", **SPEED_UP} for label, *_ in rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sections", default="decode,decode_cost,kv_cache",
                        help="comma-separated: decode, decode_cost, kv_cache")
    parser.add_argument("--prefix-model", default=str(Path(__file__).resolve().parent.parent / "runs/prefix_lm/model"),
                        help="prefix LM for the kv_cache section (untrained if the directory is missing)")
    parser.add_argument("--tokens", type=int, default=30, help="kv_cache: tokens generated per caption")
    args = parser.parse_args()
    sections = {"decode": decode_section, "decode_cost": decode_cost_section, "kv_cache": kv_cache_section}
    for section in args.sections.split(","):
        sections[section.strip()](args)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
