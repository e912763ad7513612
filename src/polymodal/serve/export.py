"""Export a captioner to ONNX and caption with onnxruntime, without the PyTorch model.

Two graphs, both with a dynamic batch dimension:

    encoder.onnx       images (B, 3, S, S)                    -> the decoder's initial state tensors
    decoder_step.onnx  tokens (B,) + state tensors            -> logits (B, V), next state, [attention (B, N)]

The decoding state is explicit (one named input and one `<name>_out` output per tensor, as in
`generate.State`), so any runtime can drive the loop; `OnnxCaptioner` does greedy decoding in numpy
with the same rules as `generate.greedy` (<bos> and <pad> never generated, no <eos> first), and gives
the same captions as PyTorch. `int8=True` also writes dynamically quantized graphs
(`onnxruntime.quantization.quantize_dynamic`: int8 weights of the linear layers, activations
quantized on the fly; the trade-off is measured in bench/export.py).

Example:
    The bundled captioner (or a run such as "runs/attention_lstm"); exporting takes seconds (torch.onnx.export
    traces both graphs), so this example is not run in the tests:

    >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
    >>> out = export_onnx(bundled_model_dir(ATTENTION_LSTM), "exported/", int8=True)  # doctest: +SKIP
    >>> OnnxCaptioner(out, int8=True).caption(["a.png"])  # doctest: +SKIP
    ['a small red circle to the left of a large blue square']
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.images import IMAGENET_MEAN, IMAGENET_STD, ImageSource, image_to_tensor, load_image
from ..errors import CheckpointError, InputError

META = "onnx.json"
OPSET = 18
QUANTIZED_OPS = ["MatMul", "Gemm"]  # what --int8 quantizes (see quantize_int8)


def _require(module: str, extra: str = "export") -> None:
    if importlib.util.find_spec(module) is None:
        raise InputError(f"ONNX export needs the {module!r} package: pip install 'polymodal[{extra}]'")


class _EncoderGraph(nn.Module):
    """images -> decoder.init_state(encoder(images)), as a tuple in `names` order."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.model.decoder.init_state(self.model.encoder(images))
        return tuple(state[k] for k in self.names)


class _StepGraph(nn.Module):
    """(tokens, *state) -> (logits, *next state[, attention])."""

    def __init__(self, model: nn.Module, names: list[str], attention: bool):
        super().__init__()
        self.model, self.names, self.attention = model, names, attention

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new, alpha = self.model.decoder.step(tokens, dict(zip(self.names, state, strict=True)))
        outputs = (logits, *(new[k] for k in self.names))
        return (*outputs, alpha) if self.attention else outputs


def _check_exportable(model: nn.Module) -> None:
    from ..models.captioner import Captioner

    # Only a captioner whose generate() is exactly encoder -> init_state -> step is two graphs; a
    # two-pass model (refine) overrides generate and would silently lose its second pass.
    if not isinstance(model, Captioner) or type(model).generate is not Captioner.generate:
        raise InputError(f"{type(model).__name__}: ONNX export supports encoder + step-decoder captioners "
                         f"(seed_lstm, attention_lstm), not this architecture")


def _dynamic_shapes(args: tuple[torch.Tensor, ...], batch: Any) -> tuple[Any, ...]:
    """torch.export's dynamic_shapes mirror forward()'s signature: (images,) or (tokens, *state) as 2 items."""
    return ({0: batch},) if len(args) == 1 else ({0: batch}, tuple({0: batch} for _ in args[1:]))


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
            batch_inputs: list[str], batch_outputs: list[str]) -> None:
    # The torch.export-based exporter needs onnxscript; without it fall back to the TorchScript one.
    dynamo = importlib.util.find_spec("onnxscript") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and "training mode" chatter; the graphs are checked below
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_shapes=_dynamic_shapes(args, batch), dynamo=True, opset_version=OPSET,
                              verbose=False, external_data=False)
        else:
            axes = {name: {0: "batch"} for name in batch_inputs + batch_outputs}
            torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, dynamo=False, opset_version=OPSET)


def export_onnx(model: str | Path | nn.Module, out_dir: str | Path, int8: bool = False) -> Path:
    """Write encoder.onnx, decoder_step.onnx, tokenizer.json and onnx.json into `out_dir`.

    Args:
        model: a model directory (or a loaded captioner).
        out_dir: output folder (created).
        int8: also write encoder.int8.onnx and decoder_step.int8.onnx (dynamic int8 quantization).

    Returns:
        `out_dir` as a Path.

    Raises:
        InputError: the model is not an encoder + step-decoder captioner, or onnx is not installed.

    Example:
        >>> import tempfile
        >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
        >>> tmp = tempfile.TemporaryDirectory()
        >>> out = export_onnx(bundled_model_dir(ATTENTION_LSTM), f"{tmp.name}/exported")  # a few seconds: traces two graphs
        >>> sorted(p.name for p in out.glob("*.onnx"))
        ['decoder_step.onnx', 'encoder.onnx']
        >>> tmp.cleanup()
    """
    _require("onnx")
    if not isinstance(model, nn.Module):
        from ..api import load

        model = load(model)
    _check_exportable(model)
    model = model.eval().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = model.cfg.image_size
    images = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 could be specialised away by the exporter
    with torch.inference_mode():
        state = model.decoder.init_state(model.encoder(images))
        _, _, alpha = model.decoder.step(torch.full((2,), model.tokenizer.bos_id), state)
    names, attention = list(state), alpha is not None
    state_args = tuple(state[k].clone() for k in names)
    _export(_EncoderGraph(model, names), (images,), out / "encoder.onnx", ["images"], names, ["images"], names)
    step_outputs = ["logits", *(f"{k}_out" for k in names)] + (["attention"] if attention else [])
    _export(_StepGraph(model, names, attention), (torch.full((2,), model.tokenizer.bos_id), *state_args),
            out / "decoder_step.onnx", ["tokens", *names], step_outputs, ["tokens", *names], step_outputs)
    tok = model.tokenizer
    meta = {"format": "polymodal-onnx-captioner", "image_size": size, "state": names, "attention": attention,
            "bos_id": tok.bos_id, "eos_id": tok.eos_id, "suppress_ids": sorted({tok.bos_id, tok.pad_id}),
            "max_len": model.cfg.decoder.max_len, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "opset": OPSET, "int8": False}
    tok.save(out / "tokenizer.json")
    if int8:
        quantize_int8(out)
        meta["int8"] = True
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


def quantize_int8(out_dir: str | Path) -> list[Path]:
    """Dynamic int8 quantization of both graphs' linear layers: <name>.onnx -> <name>.int8.onnx."""
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    written = []
    for name in ("encoder", "decoder_step"):
        src, pre, dst = (Path(out_dir) / f"{name}{s}.onnx" for s in ("", ".pre", ".int8"))
        try:  # shape inference + folding first, as onnxruntime recommends; optional if it fails
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - the plain graph quantizes too, only less well
            shutil.copyfile(src, pre)
        # Linear layers only: onnxruntime's dynamic ConvInteger ran 5x slower than fp32 Conv on CPU
        # (bench/export.py), so the encoder's convolutions stay fp32.
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        pre.unlink()
        written.append(dst)
    return written


class OnnxCaptioner:
    """Greedy captioning with onnxruntime from an `export_onnx` folder (no PyTorch model needed).

    Example:
        >>> import tempfile
        >>> import polymodal
        >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
        >>> from polymodal.data.shapes import ShapesWorld
        >>> tmp = tempfile.TemporaryDirectory()
        >>> image = ShapesWorld(n=20, seed=0, image_size=64).image("test", 0)
        >>> captioner = OnnxCaptioner(export_onnx(bundled_model_dir(ATTENTION_LSTM), f"{tmp.name}/exported"))
        >>> captioner.caption([image]) == polymodal.load(bundled_model_dir(ATTENTION_LSTM)).caption([image], beam_size=1)
        True
        >>> tmp.cleanup()
    """

    def __init__(self, folder: str | Path, int8: bool = False, threads: int | None = None):
        _require("onnxruntime")
        import onnxruntime as ort

        from ..text.tokenizer import load_tokenizer

        self.folder = Path(folder)
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise CheckpointError(f"{self.folder}: no {META}; export a model with `polymodal export MODEL --onnx DIR`")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if int8 and not self.meta.get("int8"):
            raise CheckpointError(f"{self.folder}: exported without --int8; re-export with --int8")
        suffix = ".int8" if int8 else ""
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.folder / f"encoder{suffix}.onnx"), options, providers=providers)
        self.step = ort.InferenceSession(str(self.folder / f"decoder_step{suffix}.onnx"), options, providers=providers)
        self.tokenizer = load_tokenizer(self.folder / "tokenizer.json")

    def preprocess(self, images: list[ImageSource]) -> np.ndarray:
        """The same resize, crop and normalisation as the PyTorch model: (B, 3, S, S) float32."""
        size = self.meta["image_size"]
        return torch.stack([image_to_tensor(load_image(img), size) for img in images]).numpy()

    def generate(self, images: np.ndarray, max_len: int | None = None) -> list[list[int]]:
        """Greedy token ids (without <bos>/<eos>) for a normalised batch (B, 3, S, S)."""
        names, eos = self.meta["state"], self.meta["eos_id"]
        state = dict(zip(names, self.encoder.run(names, {"images": images.astype(np.float32)}), strict=True))
        rows = images.shape[0]
        tokens = np.full(rows, self.meta["bos_id"], dtype=np.int64)
        finished = np.zeros(rows, dtype=bool)
        history: list[np.ndarray] = []
        outputs = ["logits", *(f"{k}_out" for k in names)]
        for t in range(max_len or self.meta["max_len"]):
            logits, *new_state = self.step.run(outputs, {"tokens": tokens, **state})
            logits[:, self.meta["suppress_ids"]] = -np.inf
            if t == 0:
                logits[:, eos] = -np.inf  # generate's min_len=1: at least one word
            tokens = np.where(finished, eos, logits.argmax(-1)).astype(np.int64)
            history.append(tokens)
            finished |= tokens == eos
            state = dict(zip(names, new_state, strict=True))
            if finished.all():
                break
        seqs = np.stack(history, axis=1).tolist()
        return [seq[: seq.index(eos)] if eos in seq else seq for seq in seqs]

    def caption(self, images: list[ImageSource], max_len: int | None = None) -> list[str]:
        """Greedy captions for image paths, bytes or PIL images."""
        return [self.tokenizer.decode(ids) for ids in self.generate(self.preprocess(images), max_len)]
