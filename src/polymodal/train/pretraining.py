"""What the question-answering tasks (vqa, chat, video_qa, the fusion ablation) share: their data
config, reading a split, decoding images once, and scene-attribute pretraining of a region encoder.

On Shapes World, a frozen encoder can first be pretrained (`pretrain.steps`) to predict the colour,
shape and size of the object under each grid cell, like the object/attribute detectors behind
"bottom-up" VQA features; the result is cached, keyed by every setting that changes it.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/a.png")
    >>> _ = Path(tmp.name, "questions.jsonl").write_text(
    ...     '{"image": "a.png", "question": "what colour is it?", "answer": "black", "split": "train"}\\n')
    >>> data = QADataConfig(format="vqa", path=f"{tmp.name}/questions.jsonl")
    >>> [(r.question, r.answers) for r in load_qa_split(data, "train")]
    [('what colour is it?', ['black'])]
    >>> tmp.cleanup()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import read_safetensors, save_tensors
from ..config import DataConfig, EncoderConfig, TrainConfig
from ..data.datasets import cache_root, shapes_folder
from ..data.qa import ImageBank, QARecord, read_qa
from ..data.records import SkipReport
from ..data.shapes import COLOURS, SHAPES, SIZES, Scene
from ..errors import ConfigError
from ..nn.encoders import build_encoder
from .trainer import Trainer


@dataclass
class QADataConfig:
    format: str = "shapes"            # shapes (Shapes World qa.jsonl) | vqa (a JSON / JSONL question file)
    path: str | None = None           # the question file (vqa) or a Shapes World folder (shapes)
    images: str | None = None         # image root of the question file; default: its folder
    allow_outside_root: bool = False  # accept image paths that leave the image root ("../x.jpg")
    train_split: str = "train"
    val_split: str = "val"
    test_splits: list[str] = field(default_factory=lambda: ["test", "heldout"])
    n: int = 5000                     # Shapes World: images, generation seed and size on disk
    seed: int = 0
    render_size: int = 128
    min_count: int = 1                # question vocabulary: drop rarer words
    max_vocab: int = 10000
    max_answers: int = 1000           # answer vocabulary: the most frequent training answers
    answer_min_count: int = 1
    cache_features: bool = True       # frozen encoder: encode every image once, train on the features
    dialogues_per_image: int = 2      # chat task only


@dataclass
class PretrainConfig:
    steps: int = 0                    # encoder pretraining steps; 0 = off
    kind: str = "auto"                # auto (regions on Shapes World, answers elsewhere) | regions | answers
    batch_size: int = 32
    lr: float = 3e-3
    offset_weight: float = 0.0        # > 0: also regress where in its cell the object's centre lies (CenterNet's
                                      # offset head), so that frozen regions say more than which cell it is in


# ----------------------------------------------------------------------------- data
def shapes_dir(data: QADataConfig) -> Path:
    return shapes_folder(DataConfig(format="shapes", path=data.path, n=data.n, seed=data.seed,
                                    render_size=data.render_size))


def load_qa_split(data: QADataConfig, split: str, report: SkipReport | None = None) -> list[QARecord]:
    """Question records of one split from Shapes World or the configured question file."""
    if data.format == "shapes":
        return read_qa(shapes_dir(data) / "qa.jsonl", split=split, report=report)
    if data.format != "vqa":
        raise ConfigError(f"data.format={data.format!r}: use 'shapes' or 'vqa' (a JSON / JSONL question file)")
    if not data.path:
        raise ConfigError("data.format=vqa: set data.path to the JSON / JSONL question file")
    return read_qa(data.path, images=data.images, split=split, report=report,
                   allow_outside_root=data.allow_outside_root)


def build_bank(paths: list[str], enc_cfg: EncoderConfig, encoder: nn.Module, image_size: int, data: QADataConfig,
               report: SkipReport, progress: bool) -> ImageBank:
    """Decode the images once; with a frozen encoder (and cache_features) keep only their features."""
    encode = encoder if (enc_cfg.freeze and data.cache_features) else None
    return ImageBank(paths, image_size, encode, report, progress)


# ----------------------------------------------------------------------------- region pretraining
def cell_targets(scene: Scene, side: int) -> torch.Tensor:
    """(side * side, 6) targets per grid cell: colour, shape, size of the object under its centre
    (0 = background), whether an object's centre lies in the cell (what counting needs), and that
    object's centre relative to the cell's centre, in cells (x, y; 0 where no object is under it).

    Example:
        >>> from polymodal.data.shapes import ShapeObject
        >>> t = cell_targets(Scene((ShapeObject("circle", "red", "large", 0.33, 0.55),), (0, 0, 0)), 4)
        >>> [round(v, 2) for v in t[9].tolist()]  # cell (1, 2) holds the centre, left of and above its middle
        [1.0, 1.0, 2.0, 1.0, -0.18, -0.3]
    """
    out = torch.zeros(side * side, 6)
    colours, sizes = list(COLOURS), list(SIZES)
    for k in range(side * side):
        cx, cy = (k % side + 0.5) / side, (k // side + 0.5) / side
        inside = [o for o in scene.objects if (o.x - cx) ** 2 + (o.y - cy) ** 2 < (0.8 * o.radius) ** 2]
        if inside:
            o = min(inside, key=lambda o: (o.x - cx) ** 2 + (o.y - cy) ** 2)
            out[k, :3] = torch.tensor([colours.index(o.colour) + 1, SHAPES.index(o.shape) + 1,
                                       sizes.index(o.size) + 1])
            out[k, 4:] = torch.tensor([(o.x - cx) * side, (o.y - cy) * side])
    for o in scene.objects:
        out[min(int(o.y * side), side - 1) * side + min(int(o.x * side), side - 1), 3] = 1
    return out


class RegionPretrainer(nn.Module):
    """An image encoder with 1x1 heads that classify each region's colour, shape, size and centre flag, and
    with `offset_weight` > 0 a 1x1 head that regresses where in the cell the object's centre lies."""

    def __init__(self, encoder: nn.Module, offset_weight: float = 0.0):
        super().__init__()
        self.encoder, self.offset_weight = encoder, offset_weight
        self.heads = nn.Linear(encoder.out_dim, len(COLOURS) + len(SHAPES) + len(SIZES) + 5)
        self.offsets = nn.Linear(encoder.out_dim, 2) if offset_weight > 0 else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        regions = self.encoder(batch["images"])
        logits = self.heads(regions)  # (B, N, K)
        targets = batch["tokens"]  # (B, N, 6) of cell_targets: named "tokens" so the Trainer takes the batch
        labels = targets[..., :4].long()
        sizes = [len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1, 2]
        losses = {name: F.cross_entropy(part.reshape(-1, part.shape[-1]), labels[..., i].reshape(-1))
                  for i, (name, part) in enumerate(zip(("colour", "shape", "size", "centre"),
                                                       logits.split(sizes, dim=-1), strict=True))}
        if self.offsets is not None:
            under = labels[..., 0] > 0  # only cells with an object under them have an offset to say
            error = F.smooth_l1_loss(self.offsets(regions)[under], targets[..., 4:][under], beta=0.1)
            losses["offset"] = self.offset_weight * error
        losses["loss"] = sum(losses.values())
        return logits, losses


class _PretrainSet(Dataset):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "targets": self.targets[i]}


def _collate_pretrain(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    from ..data.images import normalize

    return {"images": normalize(torch.stack([it["image"] for it in items])),
            "tokens": torch.stack([it["targets"] for it in items])}


HEADS_FILE = "region_heads.safetensors"  # beside encoder.safetensors: the per-region classifiers
CENTRE_LOGITS = 2  # the last two outputs of the heads: "no object centre here" / "an object's centre"


def _save_region_model(folder: Path, model: RegionPretrainer) -> None:
    save_tensors(folder / "encoder.safetensors", model.encoder.state_dict())
    save_tensors(folder / HEADS_FILE, model.heads.state_dict())


def load_centre_head(head: nn.Linear, encoder_weights: str | Path) -> None:
    """Copy the pretraining's object-centre classifier (saved beside the encoder) into `head` (C -> 2)."""
    state = read_safetensors(Path(encoder_weights).parent / HEADS_FILE)
    with torch.no_grad():
        head.weight.copy_(state["weight"][-CENTRE_LOGITS:])
        head.bias.copy_(state["bias"][-CENTRE_LOGITS:])


def pretrain_region_encoder(enc_cfg: EncoderConfig, image_size: int, data: QADataConfig, pre: PretrainConfig,
                            seed: int = 0, progress: bool = True) -> Path:
    """Pretrain `enc_cfg`'s encoder on Shapes World scene attributes (train split); returns the weight file.

    The result is cached under the polymodal cache folder, keyed by every setting that changes it.
    """
    if data.format != "shapes":
        raise ConfigError("pretrain.steps > 0 needs data.format=shapes (it learns from Shapes World scenes); "
                          "set pretrain.steps=0 or model.encoder.pretrained to a weight file")
    # kind only picks this function; an unset offset weight is left out so that earlier caches stay valid
    pre_key = {k: v for k, v in dataclasses.asdict(pre).items() if k != "kind" and (k != "offset_weight" or v)}
    settings = {"encoder": dataclasses.asdict(enc_cfg), "image_size": image_size, "pretrain": pre_key,
                "data": [data.path, data.n, data.seed, data.render_size], "seed": seed, "version": 1}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "region-encoders" / f"{enc_cfg.name}-{key}"
    weights = folder / "model" / "encoder.safetensors"
    if weights.is_file() and (weights.parent / HEADS_FILE).is_file():
        return weights
    root = shapes_dir(data)
    lines = [json.loads(line) for line in (root / "scenes.jsonl").read_text(encoding="utf-8").splitlines()]
    counters: dict[str, int] = {}
    paths, scenes = [], []
    for row in lines:  # scenes.jsonl lists each split's images in index order
        i = counters[row["split"]] = counters.get(row["split"], -1) + 1
        if row["split"] == data.train_split:
            paths.append(str(root / f"images/{row['split']}/{row['split']}_{i:06d}.png"))
            scenes.append(Scene.from_dict(row))
    torch.manual_seed(seed)
    encoder = build_encoder(dataclasses.replace(enc_cfg, freeze=False, fine_tune_last_n=-1, pretrained=None))
    with torch.no_grad():
        side = int(encoder(torch.zeros(1, 3, image_size, image_size)).shape[1] ** 0.5)
    bank = ImageBank(paths, image_size, progress=progress)
    targets = torch.stack([cell_targets(s, side) for p, s in zip(paths, scenes, strict=True) if p in bank.index])
    model = RegionPretrainer(encoder, pre.offset_weight)
    train_cfg = TrainConfig(out_dir=str(folder), steps=pre.steps, batch_size=pre.batch_size, lr=pre.lr,
                            warmup_steps=min(50, pre.steps // 10), eval_every=0, checkpoint_every=0,
                            log_every=max(pre.steps // 10, 1))
    trainer = Trainer(model, _PretrainSet(bank.images, targets), train_cfg, collate=_collate_pretrain,
                      save_model=lambda f: _save_region_model(Path(f), model),
                      seed=seed, run_config=settings, progress=progress)
    trainer.fit(resume=False)
    return weights
