"""Batched beam search vs a per-image beam loop, side by side on 64 Shapes World test images.

    python bench/decode.py [--model DIR] [--images 64]

Writes the table to docs/benchmarks.md (section "decode").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import best_time, machine, peak_rss_mb, write_section  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.assets import bundled_model_dir  # noqa: E402
from polymodal.config import DataConfig  # noqa: E402
from polymodal.data.datasets import ImageDataset, collate_captions, load_split  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    model = load(args.model or bundled_model_dir()).eval()
    records = load_split(DataConfig(format="shapes"), "test")[: args.images]
    batch = collate_captions([ImageDataset(records, model.cfg.image_size)[i] for i in range(len(records))])
    images = batch["images"]

    rows = []
    for beam in (3, 5):
        cfg = GenerationConfig(strategy="beam", beam_size=beam, max_len=model.cfg.decoder.max_len)
        per_image = best_time(lambda cfg=cfg: [model.generate(images[i:i + 1], cfg) for i in range(len(images))])
        batched = best_time(lambda cfg=cfg: model.generate(images, cfg))
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
{machine()}, best of 3 runs. Both columns run the same `generate.beam_search`; the loop calls it once
per image, the batched run once for all {n} ({n} x beam rows in one step).

| decoding | per-image loop | batched | speed-up | same captions |
|---|---|---|---|---|
{table}

Greedy, batched: {greedy:.3f} s ({n / greedy:.0f} img/s). Peak RSS {peak_rss_mb():.0f} MB.
""")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
