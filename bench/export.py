"""ONNX export: PyTorch vs onnxruntime fp32 vs onnxruntime dynamic int8, side by side.

    python bench/export.py [--model DIR] [--images 200]

Greedy captions of Shapes World test images from all three: speed (a batch, and one image at a time,
one thread each), agreement with PyTorch, CIDEr-D against the references, and size on disk; and why --int8
leaves the convolutions in fp32 (the encoder with dynamic int8 convolutions, timed against fp32). Records
the run in docs/results/bench_export.json and redraws its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import best_time, machine, shown, write_section  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.assets import ATTENTION_LSTM, bundled_model_dir  # noqa: E402
from polymodal.config import DataConfig  # noqa: E402
from polymodal.data.datasets import load_split  # noqa: E402
from polymodal.eval.caption_metrics import caption_metrics  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402
from polymodal.serve.export import QUANTIZED_OPS, OnnxCaptioner, export_onnx  # noqa: E402

SPEED_UP = {"format": ".2f", "unit": "x"}


def conv_int8_slowdown(out: Path, images: np.ndarray) -> float:
    """Encoder time with dynamic int8 convolutions (onnxruntime ConvInteger) over the fp32 encoder's, one thread."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = out / "encoder.onnx", out / "encoder.conv_int8.onnx"
    # ConvInteger takes uint8 weights; the linear layers are quantized as --int8 does
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", *QUANTIZED_OPS])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    times = {}
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        times[path] = best_time(lambda s=session: s.run(None, {"images": images}), repeats=2)
    return times[int8] / times[fp32]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="captioner directory (default: the bundled model)")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = args.model or bundled_model_dir(ATTENTION_LSTM)
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
        conv = conv_int8_slowdown(out, images.numpy())
        print(f"encoder with int8 convolutions: {conv:.1f}x the time of fp32")

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
dynamic `ConvInteger` ran the encoder {conv:.1f}x {'slower' if conv >= 1 else 'faster'} than fp32 here \
(the batch of {n}, measured in the same run).

| runtime | batch of {n} | one image | same caption as PyTorch | CIDEr-D | weights |
|---|---|---|---|---|---|
{table}
""", figures=figures(rows, conv), described=DESCRIBED)


DESCRIBED = {"ONNX fp32, batch": {"what": "captions/s of a batch, vs PyTorch", **SPEED_UP},
             "ONNX int8, batch": {"what": "captions/s of a batch, vs PyTorch", **SPEED_UP},
             "ONNX fp32, one image": {"what": "one image at a time, vs PyTorch", **SPEED_UP},
             "ONNX int8, one image": {"what": "one image at a time, vs PyTorch", **SPEED_UP},
             "ONNX int8, same captions": {"what": "captions equal to PyTorch's", "format": ".0f", "unit": ""},
             "ONNX int8, CIDEr-D": {"what": "CIDEr-D of the int8 captions", "format": ".3f", "unit": ""},
             "int8 convolutions, encoder": {"what": "encoder with dynamic int8 ConvInteger vs fp32 (time ratio: "
                                                   "above 1 is slower)", "format": ".1f", "unit": "x"}}


def figures(rows: list[tuple], conv: float) -> dict[str, float]:
    """The run's headline figures (docs/results/bench_export.json) from the table rows."""
    by_name = {name: (b, s, same, cider) for name, b, s, same, cider, _ in rows}
    base_b, base_s = by_name["PyTorch"][:2]
    out = {}
    for name in ("ONNX fp32", "ONNX int8"):
        b, s, same, cider = by_name[name]
        out |= {f"{name}, batch": base_b / b, f"{name}, one image": base_s / s}
    return out | {"ONNX int8, same captions": by_name["ONNX int8"][2], "ONNX int8, CIDEr-D": by_name["ONNX int8"][3],
                  "int8 convolutions, encoder": conv}


if __name__ == "__main__":
    main()
