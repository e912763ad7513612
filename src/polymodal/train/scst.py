"""Task `scst`: self-critical sequence training (Rennie et al. 2017) of any trained captioner.

REINFORCE on the caption metric itself: sample K captions per image with generate.py's sampling,
score each with CIDEr-D against the image's references, and raise the log-probability of the
samples that beat a baseline, lower the others:

    loss = - mean_t [ (r(sample) - b) * log p(sample_t | sample_<t, image) ]

with b the reward of the greedy caption ("self-critical", Rennie et al. sec. 5) or the mean reward
of the other K - 1 samples (Luo 2020, "A better variant of self-critical sequence training").
The log-probabilities come from teacher forcing the samples through the model's own `forward`, so
any captioner (LSTM, transformer decoder, prefix LM) trains the same way. The model runs in eval
mode (no dropout, fixed BatchNorm statistics): the network that samples is the one that is scored.

    polymodal train configs/scst.yaml init_from=runs/transformer

An instruction assistant (models/assistant.py) trains the same way: its caption is its reply to "describe the
image", sampled and teacher-forced after that request (`Captioner.caption_context`).

Example:
    >>> reward = CiderD([["a red circle", "a red round circle"], ["a blue square"]])
    >>> round(reward.score("a red circle", 0), 3) > reward.score("a blue square", 0)
    True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pycocoevalcap.cider.cider_scorer import precook
from torch import nn

from ..api import load
from ..config import DataConfig, TrainConfig
from ..data.datasets import CaptionDataset, ImageDataset, collate_captions, load_split, shapes_folder
from ..data.instructions import InstructionConfig
from ..data.records import SkipReport
from ..errors import ConfigError
from ..eval.caption_metrics import simple_tokenize
from ..eval.hallucination import ObjectTruth
from ..generate import GenerationConfig
from .captioning import caption_validation, decoded_metrics
from .instruction_anchor import instruction_anchor
from .trainer import Trainer

Reward = Callable[[list[Any], list[int]], torch.Tensor]  # what `describe` read of each sample, its row


@dataclass
class ScstConfig:
    baseline: str = "greedy"         # greedy (Rennie et al.) | mean (of the other samples, Luo 2020)
    num_samples: int = 5             # captions sampled per image
    eval_images: int = 200           # validation images captioned greedily for CIDEr-D
    # Truth: subtract this much reward per named object that is not in the image (and `missing_penalty` per
    # object of the image left unnamed), read from the scenes of Shapes World or a COCO instances file.
    hallucination_penalty: float = 0.0
    missing_penalty: float = 0.0
    objects: str = ""                # COCO instances JSON; empty = the Shapes World scenes of data.format=shapes
    # An assistant's other replies held in place: its teacher-forced loss on a batch of its instruction mixture,
    # this much of it, added to each step's (train/instruction_anchor.py). 0 = SCST alone.
    instruction_weight: float = 0.0
    instruction_batch: int = 16
    instructions: InstructionConfig = field(default_factory=InstructionConfig)


@dataclass
class ScstExperimentConfig:
    task: str = "scst"
    seed: int = 0
    init_from: str = ""              # the trained captioner (a model or run directory) to fine-tune
    scst: ScstConfig = field(default_factory=ScstConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Validation loss is not what SCST optimises (it usually rises): keep the model with the best CIDEr-D.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, warmup_steps=0,
                                                                   early_stop_metric="cider"))


class CiderD:
    """CIDEr-D of single captions, with document frequencies fixed by a reference corpus.

    The arithmetic is pycocoevalcap's `CiderScorer` (its n-gram counting, TF-IDF vectors, clipping,
    Gaussian length penalty with sigma 6, x10), captions tokenized by `metrics.simple_tokenize`.
    pycocoevalcap takes the IDF from the images being scored; a reward needs it fixed, so it comes
    from `references` (the training set), as in the original SCST code. Scored against the same
    corpus, the numbers equal pycocoevalcap's per-image CIDEr exactly (tests/test_scst.py).

    Args:
        references: per image, its reference captions; images are addressed by their index here.
    """

    def __init__(self, references: Sequence[list[str]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self.refs = [[precook(simple_tokenize(r), n) for r in refs] for refs in references]
        self.df: Counter = Counter()
        for refs in self.refs:
            self.df.update({gram for ref in refs for gram in ref})
        self.log_n = math.log(float(len(self.refs)))
        self._ref_vecs: dict[int, list[tuple]] = {}

    def _vec(self, counts: dict[tuple, int]) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(self.n)]
        norm, length = [0.0] * self.n, 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = tf * (self.log_n - math.log(max(1.0, self.df[gram])))
            norm[k] += vec[k][gram] ** 2
            length += tf if k == 1 else 0  # pycocoevalcap's "length" counts bigrams; kept for identical scores
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, caption: str, index: int) -> float:
        """CIDEr-D of one caption against the references of image `index`."""
        if index not in self._ref_vecs:
            self._ref_vecs[index] = [self._vec(r) for r in self.refs[index]]
        vec, norm, length = self._vec(precook(simple_tokenize(caption), self.n))
        total = 0.0
        for vec_r, norm_r, length_r in self._ref_vecs[index]:
            penalty = math.exp(-((length - length_r) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                val = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] and norm_r[k]:
                    val /= norm[k] * norm_r[k]
                total += val * penalty
        return total / self.n / len(self._ref_vecs[index]) * 10.0

    def __call__(self, captions: list[str], indices: list[int]) -> torch.Tensor:
        return torch.tensor([self.score(c, i) for c, i in zip(captions, indices, strict=True)])


class TruthPenalty:
    """A reward minus a penalty per hallucinated object (and per object left out): SCST that learns to be true.

    Example:
        >>> from polymodal.eval.hallucination import ObjectTruth, SceneObject, ShapesVocabulary
        >>> truth = ObjectTruth({"7": [SceneObject("circle", {"colour": "red"})]}, ShapesVocabulary())
        >>> reward = TruthPenalty(lambda caps, idx: torch.ones(len(caps)), truth, ["7"],
        ...                       ScstConfig(hallucination_penalty=0.5))
        >>> reward(["a red circle", "a red circle and a blue star"], [0, 0]).tolist()
        [1.0, 0.5]
    """

    def __init__(self, base: Reward, truth: ObjectTruth, image_ids: list[str], cfg: ScstConfig):
        missing = [i for i in dict.fromkeys(image_ids) if i not in truth.objects]
        if missing:
            raise ConfigError(f"scst.hallucination_penalty: no objects known for image {missing[0]!r} "
                              f"({len(missing)} images); check scst.objects")
        self.base, self.truth, self.ids, self.cfg = base, truth, image_ids, cfg

    def __call__(self, captions: list[str], indices: list[int]) -> torch.Tensor:
        errors = torch.tensor([self.truth.errors(c, self.ids[i]) for c, i in zip(captions, indices, strict=True)],
                              dtype=torch.float32).view(-1, 2)
        return (self.base(captions, indices) - self.cfg.hallucination_penalty * errors[:, 0]
                - self.cfg.missing_penalty * errors[:, 1])


def _object_truth(cfg: ScstExperimentConfig) -> ObjectTruth:
    if cfg.scst.objects:
        return ObjectTruth.coco(cfg.scst.objects)
    if cfg.data.format != "shapes":
        raise ConfigError("scst.hallucination_penalty off Shapes World needs scst.objects: a COCO instances file")
    return ObjectTruth.shapes(shapes_folder(cfg.data))


class SelfCritical(nn.Module):
    """The SCST objective around a captioner, for the generic Trainer.

    It registers the captioner's own modules under their own names, so that its state dict, the
    trainer's checkpoints and resume, and `train.encoder_lr` see exactly the captioner's parameters.

    Example:
        >>> import polymodal
        >>> from polymodal.assets import bundled_model_dir
        >>> from polymodal.data.shapes import ShapesWorld
        >>> model = polymodal.load(bundled_model_dir())  # SCST fine-tunes a trained captioner
        >>> world = ShapesWorld(n=20, seed=0, image_size=64)
        >>> references = [world.captions("train", i) for i in range(2)]
        >>> images = model.preprocess([world.image("train", i) for i in range(2)])
        >>> objective = SelfCritical(model, CiderD(references), ScstConfig(baseline="mean"))
        >>> _, terms = objective({"images": images, "record": torch.tensor([0, 1])})  # record: reference rows
        >>> terms["loss"].backward()
        >>> sorted(terms)
        ['advantage_abs', 'loss', 'reward', 'scst_loss']
    """

    def __init__(self, captioner: nn.Module, reward: Reward, cfg: ScstConfig,
                 anchor: Callable[[torch.device], torch.Tensor] | None = None):
        super().__init__()
        if cfg.baseline not in ("greedy", "mean"):
            raise ConfigError(f"scst.baseline must be greedy or mean, got {cfg.baseline!r}")
        if cfg.baseline == "mean" and cfg.num_samples < 2:
            raise ConfigError("scst.baseline=mean needs scst.num_samples >= 2")
        object.__setattr__(self, "captioner", captioner)  # a plain attribute: its children follow
        for name, child in captioner.named_children():
            self.add_module(name, child)
        self.reward, self.cfg, self.anchor = reward, cfg, anchor  # anchor: train/instruction_anchor.py

    def train(self, mode: bool = True) -> SelfCritical:
        super().train(mode)
        self.captioner.eval()  # on-policy: sampling and scoring run the same network (no dropout)
        return self

    # ---- what a subclass changes to train replies to prompts (train/reply_rl.py) -------------------------
    def samples(self, batch: dict[str, torch.Tensor], cfg: GenerationConfig) -> list[list[int]]:
        """Generated ids, `cfg.num_return_sequences` per image in batch order."""
        return [h.tokens for per_image in self.captioner.generate(batch["images"], cfg) for h in per_image]

    def contexts(self, batch: dict[str, torch.Tensor]) -> list[list[int]]:
        """Per image, the ids a sample follows: <bos>, or an assistant's "describe the image" request."""
        return [self.captioner.caption_context()] * len(batch["images"])

    def max_len(self, batch: dict[str, torch.Tensor]) -> int:
        """The most tokens (<eos> included) a sample of this batch is generated with."""
        return self.captioner.caption_max_len

    @property
    def suppressed(self) -> list[int]:
        """Ids generation never emits: left out of the scored distribution too."""
        tok = self.captioner.tokenizer
        return sorted({tok.pad_id, tok.bos_id, *self.captioner.unsaid_ids})

    def describe(self, ids: list[int]) -> Any:
        """What the reward reads of a sample: its text."""
        return self.captioner.tokenizer.decode(ids)

    # ---- the objective ----------------------------------------------------------------------------
    def sequence_logprobs(self, images: torch.Tensor, sequences: list[list[int]],
                          contexts: list[list[int]] | None = None, max_len: int | None = None) -> tuple[torch.Tensor, ...]:
        """Teacher-forced log p of each sampled token (R, T) after its row's context (default: the caption's),
        and the mask of those tokens (R, T); T spans the whole row, the context's positions masked out."""
        tok = self.captioner.tokenizer
        contexts = contexts or [self.captioner.caption_context()] * len(sequences)
        max_len = max_len or self.captioner.caption_max_len
        # A sample that stopped before max_len ended with <eos>, whose probability counts too.
        rows = [[*c, *s] + ([tok.eos_id] if len(s) < max_len else []) for c, s in zip(contexts, sequences, strict=True)]
        tokens = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long, device=images.device)
        for r, seq in enumerate(rows):
            tokens[r, : len(seq)] = torch.tensor(seq, device=images.device)
        logits, _ = self.captioner({"images": images, "tokens": tokens})
        logits = logits.float().index_fill(-1, torch.tensor(self.suppressed, device=images.device), -math.inf)
        targets = tokens[:, 1:]
        logp = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        start = torch.tensor([len(c) - 1 for c in contexts], device=images.device)
        mask = (torch.arange(targets.shape[1], device=images.device)[None] >= start[:, None]) & (targets != tok.pad_id)
        return torch.where(mask, logp, torch.zeros_like(logp)), mask

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[None, dict[str, torch.Tensor]]:
        images, records = batch["images"], batch["record"].tolist()
        k, max_len = self.cfg.num_samples, self.max_len(batch)
        # The sampling seed comes from torch's RNG, which the trainer seeds and restores on resume.
        seed = int(torch.randint(2 ** 31 - 1, ()))
        sampled = self.samples(batch, GenerationConfig(strategy="sample", num_return_sequences=k, min_len=0,
                                                       max_len=max_len, seed=seed))
        indices = [i for i in records for _ in range(k)]
        rewards = self.reward([self.describe(s) for s in sampled], indices).to(images.device)
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.baseline == "greedy":
            greedy = self.samples(batch, GenerationConfig(strategy="greedy", max_len=max_len))
            base = self.reward([self.describe(s) for s in greedy], records).to(images.device)
            terms["greedy_reward"] = base.mean()
            base = base.repeat_interleave(k)
        else:
            per_image = rewards.view(-1, k)
            base = ((per_image.sum(1, keepdim=True) - per_image) / (k - 1)).reshape(-1)
        contexts = [c for c in self.contexts(batch) for _ in range(k)]
        logp, mask = self.sequence_logprobs(images.repeat_interleave(k, dim=0), sampled, contexts, max_len)
        advantage = (rewards - base)[:, None]
        scst_loss = -(advantage * logp).sum() / mask.sum().clamp(min=1)
        loss = scst_loss
        if self.anchor is not None and self.cfg.instruction_weight:
            held = self.anchor(images.device)
            loss = loss + self.cfg.instruction_weight * held
            terms["instruction_loss"] = held.detach()
        return None, {"loss": loss, "scst_loss": scst_loss.detach(), "reward": rewards.mean(), **terms,
                      "advantage_abs": advantage.abs().mean()}


def keep_ood_stats(model: nn.Module, best: Path) -> None:
    """Save the starting model's out-of-distribution statistics beside the best model, where the image features
    they describe did not change (a frozen encoder)."""
    stats = getattr(model, "ood_stats", None)
    frozen = not any(p.requires_grad for p in model.encoder.parameters())
    if stats is not None and frozen and best.is_dir():
        stats.save(best)


def train_scst(cfg: ScstExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Fine-tune the captioner in `init_from` with SCST; the best model (by CIDEr-D) lands in `{out_dir}/model`."""
    import dataclasses

    if not cfg.init_from:
        raise ConfigError("scst: set init_from to a trained captioner's directory (e.g. runs/transformer)")
    captioner = load(cfg.init_from)
    report = SkipReport(source="training data")
    size = captioner.cfg.image_size
    train_set = ImageDataset(load_split(cfg.data, cfg.data.train_split, report), size, cfg.data.preload,
                             report, progress)
    val_set = CaptionDataset(load_split(cfg.data, cfg.data.val_split, report), captioner.tokenizer, size,
                             cfg.data.max_len, cfg.data.preload, report, progress)
    torch.manual_seed(cfg.seed)
    reward: Reward = CiderD([rec.captions for rec in train_set.records])
    if cfg.scst.hallucination_penalty or cfg.scst.missing_penalty:
        reward = TruthPenalty(reward, _object_truth(cfg), [rec.id for rec in train_set.records], cfg.scst)
    anchor = instruction_anchor(captioner, cfg, report, progress) if cfg.scst.instruction_weight else None
    objective = SelfCritical(captioner, reward, cfg.scst, anchor)

    def evaluate(_: nn.Module) -> dict[str, float]:
        if captioner.caption_context() != [captioner.tokenizer.bos_id]:  # an assistant: its captions answer a
            return decoded_metrics(captioner, val_set, cfg.scst.eval_images)  # request, not teacher-forced <bos>
        return caption_validation(captioner, val_set, cfg.train.batch_size, cfg.train.eval_batches,
                                  decode_images=cfg.scst.eval_images)

    trainer = Trainer(objective, train_set, cfg.train, collate=collate_captions, save_model=captioner.write_files,
                      seed=cfg.seed, evaluate=evaluate, run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(architecture=captioner.architecture, train_images=len(train_set), skipped_records=report.count)
    keep_ood_stats(captioner, Path(cfg.train.out_dir) / "model")
    return summary


train_scst.config_cls = ScstExperimentConfig  # type: ignore[attr-defined]
