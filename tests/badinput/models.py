"""Config and checkpoint cases: YAML files and overrides, model directories, trainer checkpoints.

Configs go through `load_task_config` (what `polymodal train` runs); model directories through
`polymodal.load`; trainer checkpoints through `Trainer.maybe_resume`. A pickle disguised as
`model.safetensors` must be refused without being unpickled: its payload would create a file,
and the runner fails any error case that leaves new files behind.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import polymodal
from polymodal.checkpoint import save_model_dir
from polymodal.config import TrainConfig
from polymodal.errors import CheckpointError, ConfigError
from polymodal.train.tasks import load_task_config
from polymodal.train.trainer import Trainer

from ..conftest import tiny_model
from .cases import Case


# ----------------------------------------------------------------------------- configs
def yaml_file(text: str) -> Callable[[Path], tuple[Path, list[str]]]:
    def make(folder: Path) -> tuple[Path, list[str]]:
        path = folder / "experiment.yaml"
        path.write_text(text, encoding="utf-8")
        return path, []
    return make


def overrides(*items: str) -> Callable[[Path], tuple[Path, list[str]]]:
    def make(folder: Path) -> tuple[Path, list[str]]:
        path = folder / "experiment.yaml"
        path.write_text("train:\n  steps: 10\n", encoding="utf-8")
        return path, list(items)
    return make


def load(arg: tuple[Path, list[str]]) -> Any:
    return load_task_config(arg[0], arg[1])[1]


def config_cases() -> list[Case]:
    def case(name: str, text: str, contains: str = "", expect: type | None = ConfigError,
             check: Callable | None = None) -> Case:
        return Case("configs", name, yaml_file(text), load, expect, contains=contains, check=check)

    def override(name: str, items: tuple[str, ...], contains: str) -> Case:
        return Case("configs", f"override-{name}", overrides(*items), load, ConfigError,
                    mentions=lambda a: a[1][0].split("=")[0].split(".")[-1], contains=contains)

    unknown = {"top-level-trian": ("trian:\n  steps: 1\n", "did you mean 'train'"),
               "train-stpes": ("train:\n  stpes: 1\n", "did you mean 'steps'"),
               "decoder-hiden-dim": ("model:\n  decoder:\n    hiden_dim: 8\n", "did you mean 'hidden_dim'"),
               "encoder-misspelt": ("model:\n  encodr:\n    width: 8\n", "did you mean 'encoder'"),
               "data-formt": ("data:\n  formt: coco\n", "did you mean 'format'"),
               "train-learning-rate": ("train:\n  learning_rate: 0.1\n", "unknown key"),
               "nothing-close": ("train:\n  zzzzzz: 1\n", "known keys"),
               "task-misspelt": ("task: captionin\n", "did you mean")}
    wrong = {"steps-is-text": ("train:\n  steps: ten\n", "expected an integer"),
             "lr-is-text": ("train:\n  lr: fast\n", "lr"),
             "amp-is-yes-string": ("train:\n  amp: 'yes'\n", "true or false"),
             "image-size-is-float": ("model:\n  image_size: 1.5\n", "expected an integer"),
             "model-is-a-list": ("model: [1, 2]\n", "expected a mapping"),
             "batch-size-is-bool": ("train:\n  batch_size: true\n", "expected a number"),
             "seed-is-null": ("seed: null\n", "seed"),
             "path-is-a-number": ("data:\n  path: 5\n", "expected a string"),
             "decoder-is-a-string": ("model:\n  decoder: lstm\n", "expected a mapping")}
    negative = {"steps": "train:\n  steps: -1\n", "batch-size": "train:\n  batch_size: -8\n",
                "hidden-dim": "model:\n  decoder:\n    hidden_dim: -5\n", "image-size": "model:\n  image_size: -64\n",
                "lr": "train:\n  lr: -0.1\n", "data-n": "data:\n  n: -1\n"}
    zero = {"batch-size": "train:\n  batch_size: 0\n", "hidden-dim": "model:\n  decoder:\n    hidden_dim: 0\n",
            "image-size": "model:\n  image_size: 0\n", "num-heads": "model:\n  decoder:\n    num_heads: 0\n"}
    out = [case(f"unknown-key-{n}", t, c) for n, (t, c) in unknown.items()]
    out += [case(f"wrong-type-{n}", t, c) for n, (t, c) in wrong.items()]
    out += [case(f"negative-{n}", t, "must not be negative") for n, t in negative.items()]
    out += [case(f"zero-{n}", t, "at least 1") for n, t in zero.items()]
    out += [
        case("lr-is-nan", "train:\n  lr: .nan\n", "finite"),
        case("lr-is-infinite", "train:\n  lr: .inf\n", "finite"),
        case("broken-yaml-indent", "train:\n  steps: 1\n   lr: 2\n", "not valid YAML"),
        case("broken-yaml-bracket", "train: {steps: 1\n", "not valid YAML"),
        case("top-level-list", "- train\n- model\n", "mapping"),
        case("tabs-for-indent", "train:\n\tsteps: 1\n", "not valid YAML"),
        case("empty-file-gives-defaults", "", expect=None, check=lambda _, cfg: _is_default(cfg)),
        case("comments-only-gives-defaults", "# nothing here\n", expect=None, check=lambda _, cfg: _is_default(cfg)),
        case("bom-and-crlf", "\ufefftrain:\r\n  steps: 7\r\n", expect=None,
             check=lambda _, cfg: _assert(cfg.train.steps == 7, f"steps {cfg.train.steps}")),
        Case("configs", "missing-file", lambda f: (f / "nope.yaml", []), load, ConfigError, contains="not found"),
        override("without-equals", ("train.steps",), "key=value"),
        override("unknown-key", ("train.stepz=5",), "did you mean 'steps'"),
        override("into-a-number", ("train.steps.max=5",), "not a section"),
        override("bad-yaml-value", ("train.steps=[1,",), "not valid YAML"),
        override("wrong-type", ("train.amp=maybe",), "true or false"),
    ]
    return out


def _is_default(cfg: Any) -> None:
    _assert(cfg.train.steps == TrainConfig().steps, f"not the defaults: {cfg.train}")


def _assert(ok: bool, why: str) -> None:
    assert ok, why


# ----------------------------------------------------------------------------- model directories
def saved_model(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A `make` that saves the tiny test captioner, then damages it with `edit(model_dir)`."""
    def make(folder: Path) -> Path:
        path = folder / "model"
        tiny_model().save_pretrained(path)
        edit(path)
        return path
    return make


def truncate_weights(fraction: float | None = None, size: int | None = None) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: size if size is not None else int(len(data) * fraction)])
    return edit


class Payload:
    """Unpickling this creates a file next to the checkpoint: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def pickle_weights(path: Path) -> None:
    with open(path / "model.safetensors", "wb") as fh:
        pickle.dump({"state": Payload(path.parent / "PWNED")}, fh)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, copied out of its memory map (the file is rewritten next)."""
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def torch_save_weights(path: Path) -> None:
    torch.save(read_tensors(path / "model.safetensors"), path / "model.safetensors")


def edit_json(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps(change(data)))
    return edit


def set_key(data: dict, dotted: str, value: Any) -> dict:
    node = data
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def edit_weights(change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        save_file(change(read_tensors(path / "model.safetensors")), str(path / "model.safetensors"))
    return edit


def header_claims(length: int) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(struct.pack("<Q", length) + data[8:])
    return edit


def checkpoint_cases() -> list[Case]:
    def case(name: str, edit: Callable[[Path], None], contains: str = "") -> Case:
        return Case("checkpoints", name, saved_model(edit), polymodal.load, CheckpointError, contains=contains)

    def remove(name: str) -> Callable[[Path], None]:
        return lambda path: (path / name).unlink()

    def words_added(data: dict) -> dict:
        data["words"] += ["zebra", "giraffe", "okapi"]
        return data

    out = [case(f"truncated-safetensors-{n}", truncate_weights(size=s)) for n, s in
           (("0-bytes", 0), ("4-bytes", 4), ("8-bytes", 8), ("in-header", 40))]
    out += [case(f"truncated-safetensors-at-{f * 100:g}pct", truncate_weights(f)) for f in (0.25, 0.5, 0.9, 0.999)]
    out += [
        case("header-claims-2-to-the-60-bytes", header_claims(2**60)),
        case("random-bytes-as-safetensors", lambda p: (p / "model.safetensors").write_bytes(os.urandom(4096))),
        case("pickle-named-model-safetensors", pickle_weights),
        case("torch-save-named-model-safetensors", torch_save_weights),
        case("weights-missing", remove("model.safetensors"), "missing"),
        case("weights-is-a-directory", lambda p: (remove("model.safetensors")(p), (p / "model.safetensors").mkdir())),
        case("shapes-do-not-match-config", edit_json("config.json", lambda d: set_key(d, "model.decoder.hidden_dim", 48)),
             "shape"),
        case("tokenizer-does-not-match-config", edit_json("tokenizer.json", words_added), "tokenizer"),
        case("tensor-missing", edit_weights(lambda t: dict(list(t.items())[1:])), "missing"),
        case("unexpected-tensor", edit_weights(lambda t: {**t, "extra.weight": torch.zeros(2)}), "unexpected"),
        case("config-missing", remove("config.json"), "config.json"),
        case("config-not-json", lambda p: (p / "config.json").write_text("{architecture: captioner"), "not valid JSON"),
        case("config-no-architecture", edit_json("config.json", lambda d: {"model": d["model"]}), "architecture"),
        case("config-unknown-architecture", edit_json("config.json", lambda d: {**d, "architecture": "gpt9"}),
             "unknown architecture"),
        case("config-unknown-key", edit_json("config.json", lambda d: set_key(d, "model.decoder.hiden_dim", 3)),
             "did you mean"),
        case("config-wrong-type", edit_json("config.json", lambda d: set_key(d, "model.decoder.hidden_dim", "big")),
             "expected an integer"),
        case("config-is-a-list", lambda p: (p / "config.json").write_text("[]"), "architecture"),
        case("tokenizer-missing", remove("tokenizer.json"), "tokenizer.json"),
        case("tokenizer-not-json", lambda p: (p / "tokenizer.json").write_text("words: a b c"), "not valid JSON"),
        case("tokenizer-unknown-type", edit_json("tokenizer.json", lambda d: {**d, "type": "sentencepiece"}),
             "unknown tokenizer type"),
        case("tokenizer-without-specials", edit_json("tokenizer.json", lambda d: {**d, "words": d["words"][4:]}),
             "must start with"),
        case("tokenizer-words-not-a-list", edit_json("tokenizer.json", lambda d: {**d, "words": 5}), "tokenizer"),
        Case("checkpoints", "directory-missing", lambda f: f / "no-model", polymodal.load, CheckpointError),
        Case("checkpoints", "empty-directory", lambda f: _mkdir(f / "empty"), polymodal.load, CheckpointError),
        Case("checkpoints", "a-file-not-a-directory", lambda f: _touch(f / "model.bin"), polymodal.load,
             CheckpointError),
    ]
    return out + writer_cases() + trainer_cases()


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _touch(path: Path) -> Path:
    path.write_bytes(b"\x00" * 16)
    return path


# ----------------------------------------------------------------------------- writes that fail
class FullDisk:
    """A tokenizer whose save fails as a full disk would, after the weights were written."""

    def save(self, path: Path) -> None:
        Path(path).write_bytes(b"{")
        raise OSError(28, "No space left on device")


def writer_cases() -> list[Case]:
    def previous(folder: Path) -> Path:
        path = folder / "model"
        tiny_model().save_pretrained(path)
        return path

    def save_failing(path: Path) -> None:
        model = tiny_model(seed=1)
        save_model_dir(path, model.config_dict(), model, FullDisk())  # type: ignore[arg-type]

    def unchanged(path: Path, _: Any) -> None:
        raise AssertionError("unreachable: the save must fail")

    return [
        Case("checkpoints", "disk-full-during-save-keeps-previous-copy", previous,
             lambda p: _then_loads(p, save_failing), CheckpointError, contains="previous copy is untouched",
             check=unchanged),
        Case("checkpoints", "save-under-a-file", lambda f: _touch(f / "file") / "model",
             lambda p: tiny_model().save_pretrained(p), CheckpointError, mentions=lambda p: "file"),
    ]


def _then_loads(path: Path, save: Callable[[Path], None]) -> None:
    """Run a failing save, and prove the previous model still loads unchanged before re-raising."""
    before = load_file(str(path / "model.safetensors"))
    try:
        save(path)
    finally:
        after = polymodal.load(path).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "the previous copy changed"


# ----------------------------------------------------------------------------- trainer checkpoints
class Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((3, 32, 32), i * 40, dtype=torch.uint8), "tokens": torch.tensor([1, 4, 5, 2]),
                "record": i}


def trainer(folder: Path, lr: float = 1e-3) -> Trainer:
    from polymodal.data.datasets import collate_captions

    model = tiny_model()
    cfg = TrainConfig(out_dir=str(folder / "run"), steps=2, batch_size=2, warmup_steps=1, eval_every=0,
                      checkpoint_every=1, log_every=1, lr=lr)
    return Trainer(model, Pairs(), cfg, collate=collate_captions, save_model=model.write_files,
                   run_config={"train": {"lr": lr}}, progress=False)


def trained(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        trainer(folder).fit()
        edit(folder / "run" / "checkpoint")
        return folder
    return make


def resume(lr: float = 1e-3) -> Callable[[Path], bool]:
    return lambda folder: trainer(folder, lr).maybe_resume()


def trainer_cases() -> list[Case]:
    ckpt = lambda _: "checkpoint"  # noqa: E731 - the messages name the checkpoint folder
    return [
        Case("checkpoints", "resume-with-a-different-config", trained(lambda p: None), resume(lr=5e-3),
             CheckpointError, mentions=ckpt, contains="different config"),
        Case("checkpoints", "trainer-state-not-json", trained(lambda p: (p / "trainer_state.json").write_text("{")),
             resume(), CheckpointError, mentions=ckpt),
        Case("checkpoints", "optimizer-state-truncated",
             trained(lambda p: (p / "optimizer.safetensors").write_bytes((p / "optimizer.safetensors").read_bytes()[:99])),
             resume(), CheckpointError, mentions=ckpt),
        Case("checkpoints", "optimizer-state-missing", trained(lambda p: (p / "optimizer.safetensors").unlink()),
             resume(), CheckpointError, mentions=ckpt),
        Case("checkpoints", "crash-between-renames-recovers", trained(lambda p: os.replace(p, p.with_name("checkpoint.old"))),
             resume(), check=lambda _, resumed: _assert(resumed is True, "the moved-aside checkpoint was not used")),
    ]
