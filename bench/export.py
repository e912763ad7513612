"""ONNX export: PyTorch vs onnxruntime fp32 vs onnxruntime dynamic int8, side by side.

    python bench/export.py [--model DIR] [--images 200]

Greedy captions of Shapes World test images from all three: speed (a batch, and one image at a time,
one thread each), agreement with PyTorch, CIDEr-D against the references, and size on disk. Writes the
table to docs/benchmarks.md (section "export").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import best_time, machine, shown, write_section  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.assets import bundled_model_dir  # noqa: E402
from polymodal.config import DataConfig  # noqa: E402
from polymodal.data.datasets import load_split  # noqa: E402
from polymodal.eval.caption_metrics import caption_metrics  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402
from polymodal.serve.export import OnnxCaptioner, export_onnx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="captioner directory (default: the bundled model)")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = args.model or bundled_model_dir()
    model = load(model_dir).eval()
    records = load_split(DataConfig(format="shapes"), "test")[: args.images]
    references = {r.id: r.captions for r in records}
    images = model.preprocess([r.image for r in records])  # (N, 3, S, S), shared by all three
    cfg = GenerationConfig(strategy="greedy", max_len=model.cfg.decoder.max_len)

    def torch_captions(batch: torch.Tensor) -> list[str]:
        return [model.tokenizer.decode(h[0].tokens) for h in model.generate(batch, cfg)]

    with tempfile.TemporaryDirectory() as tmp:
        out = export_onnx(model, tmp, int8=True)
        sizes = {"PyTorch": sum(p.numel() * p.element_size() for p in model.state_dict().values()),
                 "ONNX fp32": sum((out / f"{n}.onnx").stat().st_size for n in ("encoder", "decoder_step")),
                 "ONNX int8": sum((out / f"{n}.int8.onnx").stat().st_size for n in ("encoder", "decoder_step"))}
        runners = {"PyTorch": torch_captions}
        for name, int8 in (("ONNX fp32", False), ("ONNX int8", True)):
            onnx = OnnxCaptioner(out, int8=int8, threads=1)
            runners[name] = lambda batch, onnx=onnx: [onnx.tokenizer.decode(t) for t in onnx.generate(batch.numpy())]
        rows, reference = [], None
        for name, run in runners.items():
            captions = run(images)
            reference = reference or captions
            same = sum(a == b for a, b in zip(reference, captions, strict=True))
            cider = caption_metrics(dict(zip(references, captions, strict=True)), references, cider_only=True,
                                    tokenizer="simple")["cider"]
            batch_s = best_time(lambda run=run: run(images), repeats=2)
            single_s = best_time(lambda run=run: [run(images[i:i + 1]) for i in range(16)], repeats=2) / 16
            rows.append((name, batch_s, single_s, same, cider, sizes[name]))
            print(f"{name}: batch {batch_s:.3f} s, one image {1000 * single_s:.1f} ms, same as PyTorch {same}/"
                  f"{len(records)}, CIDEr-D {cider:.3f}, {sizes[name] / 2**20:.2f} MB")

    n, base = len(records), rows[0]
    table = "\n".join(f"| {name} | {b:.3f} s ({n / b:.0f} img/s, {base[1] / b:.2f}x) | {1000 * s:.1f} ms "
                      f"({base[2] / s:.2f}x) | {same}/{n} | {cider:.3f} | {size / 2**20:.2f} MB |"
                      for name, b, s, same, cider, size in rows)
    write_section("export", f"""
## ONNX export: PyTorch vs onnxruntime fp32 vs dynamic int8

`python bench/export.py` — greedy captions of {n} Shapes World test images by `{shown(model_dir)}`, one
thread each ({machine()}); best of 2 runs. `polymodal export MODEL --onnx DIR --int8` writes the image
encoder and one decoder step (state in and out as tensors); int8 is onnxruntime's `quantize_dynamic`
on the linear layers (int8 weights, activations quantized on the fly); convolutions stay fp32, since
dynamic `ConvInteger` ran the encoder 5x slower than fp32 here.

| runtime | batch of {n} | one image | same caption as PyTorch | CIDEr-D | weights |
|---|---|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
