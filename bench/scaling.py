"""How cost grows: image size 64 -> 512 and dataset size 1k -> 100k images (and COCO's 600k captions).

    python bench/scaling.py [--sizes 64,128,256,512] [--datasets 1000,10000,100000,120000]

Every point runs in its own process, so its peak RSS is its own. Image size: decoding + resizing, a frozen
resnet18 forward, one captioner training step (small CNN + attention LSTM) and the feature-cache bytes
per image. Dataset size: a synthetic COCO captions file (5 captions per image, empty image files: the
loader never opens images) through `read_records`, the vocabulary and `CaptionDataset(preload=False)`.
Writes section "scaling" of docs/benchmarks.md, docs/scaling_image_size.png and
docs/scaling_dataset_size.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import best_time, load_average, machine, save_plot, today, write_section  # noqa: E402

WORDS = "a man woman dog cat riding sitting on top of the with red blue green small large near table street".split()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image_point(size: int, shapes_n: int) -> dict[str, float]:
    from polymodal.config import DataConfig, load_config
    from polymodal.data.datasets import collate_captions, load_split
    from polymodal.data.images import image_to_uint8, load_image, normalize
    from polymodal.models.captioner import Captioner
    from polymodal.nn.encoders import build_encoder
    from polymodal.text.tokenizer import WordTokenizer
    from polymodal.train.trainer import Trainer

    records = load_split(DataConfig(n=shapes_n, render_size=512), "train")[:16]
    base = rss_mb()
    start = time.perf_counter()
    images = torch.stack([image_to_uint8(load_image(r.image), size) for r in records])
    decode = (time.perf_counter() - start) / len(records)
    x = normalize(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from polymodal.config import EncoderConfig
        enc = build_encoder(EncoderConfig(name="resnet18", freeze=True)).eval()
    with torch.inference_mode():
        feats = enc(x)
        encode = best_time(lambda: enc(x), repeats=3) / len(records)
    cfg = load_config("configs/attention_lstm.yaml", [f"model.image_size={size}", "train.batch_size=8"])
    tokenizer = WordTokenizer.build(c for r in records for c in r.captions)
    model = Captioner(cfg.model, tokenizer)
    trainer = Trainer(model, [], cfg.train, collate=collate_captions, save_model=lambda _: None, progress=False)
    # Token ids only set the cost through their count: 8 captions of 12 words + <bos>/<eos>.
    tokens = torch.randint(4, len(tokenizer), (8, 14), generator=torch.Generator().manual_seed(0))
    tokens[:, 0], tokens[:, -1] = tokenizer.bos_id, tokenizer.eos_id
    batch = {"images": x[:len(tokens)], "tokens": tokens}
    step = best_time(lambda: trainer.train_step(dict(batch)), repeats=2)
    cached = model.encoder(x[:1]).numel() * 4
    return {"size": size, "decode_ms": decode * 1e3, "resnet18_ms": encode * 1e3, "train_step_s": step,
            "train_batch": len(tokens), "resnet18_kb": feats[0].numel() * 4 / 1024, "cache_kb": cached / 1024,
            "rss_mb": rss_mb(), "rss_growth_mb": rss_mb() - base}


def make_coco(folder: Path, n: int) -> Path:
    """A COCO captions file of n images x 5 captions; image files exist but are empty (never opened)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = images / f"{i:06d}.jpg"
        if not path.exists():
            path.touch()
    rng = random.Random(0)
    data = {"images": [{"id": i, "file_name": f"images/{i:06d}.jpg"} for i in range(n)],
            "annotations": [{"id": 5 * i + j, "image_id": i,
                             "caption": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))}
                            for i in range(n) for j in range(5)]}
    path = folder / f"captions_{n}.json"
    path.write_text(json.dumps(data))
    return path


def dataset_point(path: str) -> dict[str, float]:
    from polymodal.data.datasets import CaptionDataset
    from polymodal.data.formats import read_records
    from polymodal.text.tokenizer import WordTokenizer

    base = rss_mb()
    start = time.perf_counter()
    records = read_records("coco", path)
    read = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = WordTokenizer.build(c for r in records for c in r.captions)
    vocab = time.perf_counter() - start
    start = time.perf_counter()
    dataset = CaptionDataset(records, tokenizer, 224, 24, preload=False, progress=False)
    index = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(dataset), max(len(dataset) // 1000, 1)):
        dataset.tokenizer.encode(dataset.records[dataset.pairs[i][0]].captions[dataset.pairs[i][1]], max_len=24)
    return {"images": len(records), "captions": len(dataset), "file_mb": os.path.getsize(path) / 2**20,
            "read_s": read, "vocab_s": vocab, "index_s": index, "rss_mb": rss_mb(), "rss_growth_mb": rss_mb() - base}


def run_point(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--point", *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(xs: list[float], series: dict[str, list[float]], rss: list[float], xlabel: str, ylabel: str,
         name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, ys in series.items():
        ax.plot(xs, ys, "o-", label=label)
    ax.set_xscale("log", base=2 if xlabel.startswith("image") else 10)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    twin = ax.twinx()
    twin.plot(xs, rss, "k:", marker="x", label="peak RSS (MB)")
    twin.set_ylabel("peak RSS (MB)")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=7, loc="upper left")
    save_plot(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="64,128,256,512")
    parser.add_argument("--datasets", default="1000,10000,100000,120000")
    parser.add_argument("--point", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, more threads stall on busy cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.point:
        kind, value = args.point
        print(json.dumps(image_point(int(value), 60) if kind == "image" else dataset_point(value)))
        return
    img = [run_point("image", s) for s in args.sizes.split(",")]
    for p in img:
        print(p)
    with tempfile.TemporaryDirectory(prefix="bench-coco-") as tmp:
        data = [run_point("dataset", str(make_coco(Path(tmp), int(n)))) for n in args.datasets.split(",")]
    for p in data:
        print(p)
    plot([p["size"] for p in img], {"decode + resize (ms/img)": [p["decode_ms"] for p in img],
                                    "resnet18 forward (ms/img)": [p["resnet18_ms"] for p in img],
                                    "train step, batch 8 (ms)": [p["train_step_s"] * 1e3 for p in img]},
         [p["rss_mb"] for p in img], "image size (px)", "time", "scaling_image_size.png")
    plot([p["images"] for p in data], {"read annotations (s)": [p["read_s"] for p in data],
                                       "vocabulary (s)": [p["vocab_s"] for p in data],
                                       "dataset index (s)": [p["index_s"] for p in data]},
         [p["rss_mb"] for p in data], "images (5 captions each)", "seconds", "scaling_dataset_size.png")
    img_rows = "\n".join(
        f"| {p['size']} | {p['decode_ms']:.1f} | {p['resnet18_ms']:.0f} | {p['train_step_s'] * 1e3:.0f} | "
        f"{p['cache_kb']:.0f} kB | {p['rss_mb']:.0f} MB |" for p in img)
    data_rows = "\n".join(
        f"| {p['images']:,} | {p['captions']:,} | {p['file_mb']:.0f} MB | {p['read_s']:.2f} | {p['vocab_s']:.2f} | "
        f"{p['index_s']:.2f} | +{p['rss_growth_mb']:.0f} MB ({p['rss_mb']:.0f} MB) |" for p in data)
    first, last = img[0], img[-1]
    area = (last["size"] / first["size"]) ** 2
    write_section("scaling", f"""
## Scaling: image size and dataset size

`python bench/scaling.py` ({today()}) — one process per point (its own peak RSS), {machine()},
{load_average()} (shared 2-core machine). Plots: [scaling_image_size.png](scaling_image_size.png),
[scaling_dataset_size.png](scaling_dataset_size.png).

**Image size** (16 Shapes World images rendered at 512 px): decode + resize per image, frozen resnet18
forward per image (batch 16, best of 3), one training step of the `configs/attention_lstm.yaml` captioner
(small CNN, stride 8, attention over every region; batch of 8, best of 2), and what its features cost in the
feature cache per image (float32).

| image px | decode + resize (ms/img) | resnet18 (ms/img) | train step (ms) | cache per image | peak RSS |
|---|---|---|---|---|---|
{img_rows}

From {first['size']} to {last['size']} px the pixel count grows {area:.0f}x; resnet18 time grows
{last['resnet18_ms'] / first['resnet18_ms']:.0f}x and the attention captioner's step
{last['train_step_s'] / first['train_step_s']:.0f}x (its regions grow with the area: pool them with
`model.encoder.grid` for large images). Decoding is dominated by the PNG itself, not the target size.

**Dataset size** (synthetic COCO captions file, 5 captions per image; the readers only `stat` image
files, they never open them, and `data.preload=false` keeps it that way in training):

| images | captions | file | read (s) | vocabulary (s) | dataset index (s) | RSS growth (peak) |
|---|---|---|---|---|---|---|
{data_rows}

Annotation loading is linear in the number of captions. The last row is COCO's size (train2014 +
val2014 + restval: ~123k images, ~616k captions): it loads in seconds, without opening an image. The
whole file is parsed at once (`json.loads`), so peak memory holds the parsed JSON once; images stay on
disk and are decoded by DataLoader workers (`train.num_workers`) or read from the feature cache.
""", figures=headline(img, data), described=described(img, data))


def _keys(img: list[dict], data: list[dict]) -> tuple[str, str, str, str]:
    """Figure names that say which points they compare: largest vs smallest image, the largest dataset."""
    sizes, captions = f"{img[-1]['size']} vs {img[0]['size']} px", f"{data[-1]['captions'] // 1000}k captions"
    return sizes, captions, f"read {captions} (s)", f"RSS growth, {captions} (MB)"


def headline(img: list[dict], data: list[dict]) -> dict[str, float]:
    """The figures the README reads (docs/results/bench_scaling.json)."""
    sizes, captions, read, rss = _keys(img, data)
    first, last, big = img[0], img[-1], data[-1]
    return {read: big["read_s"], f"vocabulary, {captions} (s)": big["vocab_s"], rss: big["rss_growth_mb"],
            f"pixels, {sizes}": (last["size"] / first["size"]) ** 2,
            f"resnet18, {sizes}": last["resnet18_ms"] / first["resnet18_ms"],
            f"train step, {sizes}": last["train_step_s"] / first["train_step_s"]}


def described(img: list[dict], data: list[dict]) -> dict[str, dict[str, str]]:
    sizes, captions, read, rss = _keys(img, data)
    ratio = {"format": ".0f", "unit": "x"}
    return {read: {"what": "COCO-style captions file: read", "format": ".1f", "unit": " s"},
            f"vocabulary, {captions} (s)": {"what": "build the vocabulary", "format": ".1f", "unit": " s"},
            rss: {"what": "memory growth while reading", "format": ".0f", "unit": " MB"},
            f"pixels, {sizes}": {"what": "pixel count", **ratio},
            f"resnet18, {sizes}": {"what": "resnet18 forward time per image", **ratio},
            f"train step, {sizes}": {"what": "attention-LSTM training step", **ratio}}


if __name__ == "__main__":
    main()
