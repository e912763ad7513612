"""One-GPU figures (run by bench/gpu.sh): training throughput fp32 vs bf16 AMP (+ channels_last), and
caption decoding throughput, each measured side by side in one run on one CUDA device.

    python bench/gpu.py [--steps 30] [--batch 64] [--size 224] [--images 512]

Writes section "gpu" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import peak_rss_mb, today, write_section  # noqa: E402
from cache import steps_per_second  # noqa: E402
from decode import shapes_test_images  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.assets import ATTENTION_LSTM, bundled_model_dir  # noqa: E402
from polymodal.config import load_config  # noqa: E402
from polymodal.data.datasets import CaptionDataset, load_split  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402
from polymodal.models.captioner import Captioner  # noqa: E402
from polymodal.text.tokenizer import WordTokenizer  # noqa: E402


def training_rows(args: argparse.Namespace) -> list[tuple[str, float]]:
    rows = []
    for label, extra in (("fp32", []), ("bf16 autocast (`train.amp`)", ["train.amp=true"]),
                         ("bf16 + channels_last", ["train.amp=true", "train.channels_last=true"])):
        cfg = load_config("configs/attention_lstm.yaml", [
            "model.encoder.name=resnet18", f"model.image_size={args.size}", f"train.batch_size={args.batch}",
            "data.n=1000", "train.warmup_steps=1", *extra])
        records = load_split(cfg.data, "train")
        tokenizer = WordTokenizer.build(c for r in records for c in r.captions)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = Captioner(cfg.model, tokenizer)
        data = CaptionDataset(records, tokenizer, args.size, cfg.data.max_len, preload=True, progress=False)
        rate = steps_per_second(model, data, cfg, args.steps)
        rows.append((label, rate))
        print(f"train {label}: {rate:.2f} steps/s, {rate * args.batch:.0f} images/s")
    return rows


def decode_rows(args: argparse.Namespace) -> list[tuple[str, float]]:
    model = load(bundled_model_dir(ATTENTION_LSTM)).eval().cuda()
    images = shapes_test_images(args.images, model.cfg.image_size).cuda()
    rows = []
    for label, cfg in (("greedy", GenerationConfig(strategy="greedy", max_len=model.cfg.decoder.max_len)),
                       ("beam 3", GenerationConfig(strategy="beam", beam_size=3, max_len=model.cfg.decoder.max_len))):
        model.generate(images, cfg)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(images, cfg)
        torch.cuda.synchronize()
        rows.append((label, len(images) / (time.perf_counter() - start)))
        print(f"decode {label}: {rows[-1][1]:.0f} images/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU")
    train = training_rows(args)
    decode = decode_rows(args)
    base = train[0][1]
    train_table = "\n".join(f"| {label} | {rate:.2f} | {rate * args.batch:.0f} | **{rate / base:.2f}x** |"
                            for label, rate in train)
    decode_table = "\n".join(f"| {label} | {rate:.0f} |" for label, rate in decode)
    write_section("gpu", f"""
## One GPU: training with AMP, decoding

`bash bench/gpu.sh` ({today()}) — {torch.cuda.get_device_name()}, torch {torch.__version__}. Training: the
`configs/attention_lstm.yaml` captioner with a trainable resnet18 at {args.size} px, batch {args.batch},
`Trainer.train_step` over {args.steps} steps after 2 warm-up steps. Decoding: the bundled attention-LSTM
captioner on {args.images} Shapes World test images in one batch.

| training | steps/s | images/s | vs fp32 |
|---|---|---|---|
{train_table}

| decoding ({args.images} images, batched) | images/s |
|---|---|
{decode_table}

Peak host RSS {peak_rss_mb():.0f} MB; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB.
""", figures={**{f"training, {label}": rate / base for label, rate in train},
              **{f"decoding, {label} (images/s)": rate for label, rate in decode}},
        described={**{f"training, {label}": {"what": "training steps/s vs fp32", "format": ".2f", "unit": "x"}
                      for label, _ in train},
                   **{f"decoding, {label} (images/s)": {"what": f"{args.images} images, batched", "format": ".0f",
                                                        "unit": " images/s"} for label, _ in decode}})


if __name__ == "__main__":
    main()
