"""The `vqa` training task.

config -> question records (Shapes World qa.jsonl or any VQA-style JSON/JSONL) -> tokenizer and answer
vocabulary -> VQAModel -> generic Trainer -> test/heldout accuracy per question type.

At the end the best model is calibrated: a temperature fitted on the validation split's logits (saved in
its config.json; ECE before and after on every split in metrics.json's "calibration"), and
out-of-distribution statistics of its image features saved beside it (eval/ood.py). docs/calibration.md.

With a frozen image encoder (`model.encoder.freeze: true`), every image is encoded once and the
model trains on the cached region features, which makes CPU training fast. The encoder can first be
pretrained (`pretrain.steps`, train/pretraining.py).

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=vqa", "train.steps=100"])  # or "configs/vqa.yaml"
    >>> task is train_vqa
    True
    >>> task(cfg)["test"]["accuracy"]  # trains for minutes  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import read_model_dir, write_json
from ..config import TrainConfig
from ..data.qa import ImageBank, QADataset, QARecord, build_answer_vocab, collate_qa
from ..data.records import SkipReport
from ..errors import DataError
from ..eval.calibration import confidence_split, ece, fit_temperature, reliability_table
from ..eval.ood import save_model_stats
from ..eval.vqa_metrics import vqa_accuracy, vqa_report
from ..models.vqa import VQAModel, VQAModelConfig
from ..text.tokenizer import WordTokenizer
from .answer_pretraining import PRETRAINING_NOTES, choose_pretraining, pretrain_answer_encoder
from .pretraining import (
    PretrainConfig,
    QADataConfig,
    build_bank,
    load_centre_head,
    load_qa_split,
    pretrain_region_encoder,
)
from .trainer import Trainer


@dataclass
class VQAExperimentConfig:
    task: str = "vqa"
    seed: int = 0
    model: VQAModelConfig = field(default_factory=VQAModelConfig)
    data: QADataConfig = field(default_factory=QADataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/vqa"))


# ----------------------------------------------------------------------------- vqa
@dataclass
class VQAData:
    """Everything a VQA run needs besides the model: records per split, vocabularies, images."""

    splits: dict[str, list[QARecord]]
    rows: dict[str, list[int]]
    bank: ImageBank
    tokenizer: WordTokenizer
    answers: list[str]
    report: SkipReport
    pretraining: str | None = None  # how the encoder was pretrained: "regions", "answers" or None


def prepare_vqa(cfg: VQAExperimentConfig, progress: bool = True) -> tuple[VQAModel, VQAData]:
    """Read the data, build the vocabularies and the model (pretraining its encoder if configured)."""
    cfg = copy.deepcopy(cfg)  # the encoder weight path is filled in below; the caller's config stays as is
    report = SkipReport(source="question data")
    splits = load_splits(cfg.data, report)
    names = list(splits)
    tokenizer = WordTokenizer.build((r.question for r in splits[cfg.data.train_split]),
                                    min_count=cfg.data.min_count, max_size=cfg.data.max_vocab)
    answers = build_answer_vocab(splits[cfg.data.train_split], cfg.data.max_answers, cfg.data.answer_min_count)
    kind = choose_pretraining(cfg.pretrain, cfg.data.format)
    if kind is not None:
        tqdm.write(f"encoder pretraining: {PRETRAINING_NOTES[kind].format(steps=cfg.pretrain.steps)}")
    if kind == "regions":
        cfg.model.encoder.pretrained = str(pretrain_region_encoder(cfg.model.encoder, cfg.model.image_size, cfg.data,
                                                                   cfg.pretrain, cfg.seed, progress))
    elif kind == "answers":
        cfg.model.encoder.pretrained = str(pretrain_answer_encoder(
            cfg.model.encoder, cfg.model.image_size, splits[cfg.data.train_split], tokenizer, answers, cfg.data,
            cfg.pretrain, cfg.seed, progress, cfg.model.question.max_len))
    torch.manual_seed(cfg.seed)
    model = VQAModel(cfg.model, tokenizer, answers)
    if model.objectness is not None and kind == "regions":
        load_centre_head(model.objectness, cfg.model.encoder.pretrained)  # picks objects as pretrained to
        model.objectness.requires_grad_(not cfg.model.encoder.freeze)
    bank = build_bank([r.image for recs in splits.values() for r in recs], cfg.model.encoder, model.encoder,
                      cfg.model.image_size, cfg.data, report, progress)
    rows = {}
    for s in names:
        splits[s], rows[s] = bank.keep(splits[s])
    return model, VQAData(splits, rows, bank, tokenizer, answers, report, kind)


def load_splits(data: QADataConfig, report: SkipReport) -> dict[str, list[QARecord]]:
    """Question records per split; off Shapes World a test split that the file lacks (e.g. "heldout",
    which only Shapes World has) is left out with a note, instead of stopping the run."""
    splits = {s: load_qa_split(data, s, report) for s in dict.fromkeys([data.train_split, data.val_split])}
    for s in dict.fromkeys(data.test_splits):
        if s in splits:
            continue
        try:
            splits[s] = load_qa_split(data, s, report)
        except DataError:
            if data.format == "shapes":
                raise
            tqdm.write(f"data: no {s!r} questions in {data.path}; that test split is left out")
    return splits


def qa_dataset(model: VQAModel, data: VQAData, split: str, train: bool = False, bank: Any = None,
               records: list[QARecord] | None = None) -> QADataset:
    """A dataset over one split; `bank` and `records` replace the images or questions (robustness tests)."""
    return QADataset(records if records is not None else data.splits[split], data.rows[split],
                     bank if bank is not None else data.bank.__getitem__, model.tokenizer, model.answers,
                     model.cfg.question.max_len, data.report if train else None, train=train)


@torch.inference_mode()
def predict_answers(model: VQAModel, dataset: QADataset, batch_size: int = 256) -> tuple[list[str], float]:
    """The model's answer to every item, and the mean loss."""
    model.eval()
    preds: list[str] = ["" for _ in range(len(dataset))]
    total, rows = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_qa):
        if "tokens" not in batch:
            continue
        index = batch.pop("index")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits, losses = model(batch)
        total += float(losses["loss"]) * len(index)
        rows += len(index)
        for i, a in zip(index.tolist(), logits.argmax(-1).tolist(), strict=True):
            preds[i] = model.answers[a]
    model.train()
    return preds, total / max(rows, 1)


@torch.inference_mode()
def collect_logits(model: VQAModel, dataset: QADataset,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Raw (unscaled) logits (N, A), soft answer targets (N, A) and the dataset index of each row."""
    was_training = model.training
    model.eval()
    logits, targets, index = [torch.zeros(0, len(model.answers))], [torch.zeros(0, len(model.answers))], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_qa):
        if "tokens" not in batch:
            continue
        index += batch.pop("index").tolist()
        targets.append(batch.pop("targets").float())
        logits.append(model({k: v.to(model.device) for k, v in batch.items()})[0].float().cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets), index


def calibration_report(model: VQAModel, dataset: QADataset, bins: int = 15) -> dict[str, Any]:
    """ECE of the best answer's probability before and after the model's temperature, the share of answers
    below its confidence threshold and the accuracy of each group, and the reliability table after scaling."""
    logits, _, index = collect_logits(model, dataset)
    if not index:
        return {"questions": 0}
    correct = [vqa_accuracy(model.answers[a], dataset.records[i].answers)
               for a, i in zip(logits.argmax(-1).tolist(), index, strict=True)]
    before = logits.softmax(-1).max(-1).values
    after = (logits / model.temperature).softmax(-1).max(-1).values
    return {"questions": len(index), "ece_before": ece(before, correct, bins), "ece_after": ece(after, correct, bins),
            **confidence_split(after, correct, model.cfg.confidence),
            "reliability_before": reliability_table(before, correct, bins),
            "reliability": reliability_table(after, correct, bins)}


def calibrate_vqa(model: VQAModel, data: VQAData, cfg: VQAExperimentConfig) -> dict[str, Any]:
    """Fit `model.temperature` on the validation split (NLL of the best-scored answer), then report calibration
    on the validation and every test split."""
    logits, targets, _ = collect_logits(model, qa_dataset(model, data, cfg.data.val_split))
    known = targets.sum(-1) > 0  # questions whose answers are all outside the vocabulary have no label
    model.temperature = fit_temperature(logits[known], targets[known].argmax(-1)) if bool(known.any()) else 1.0
    report: dict[str, Any] = {"temperature": round(model.temperature, 4), "confidence_threshold": model.cfg.confidence}
    for split in dict.fromkeys([cfg.data.val_split, *cfg.data.test_splits]):
        if split in data.splits:
            report[split] = calibration_report(model, qa_dataset(model, data, split))
    return report


def evaluate_vqa(model: VQAModel, dataset: QADataset, batch_size: int = 256) -> dict[str, float]:
    """VQA accuracy overall and per question type, and the loss."""
    preds, loss = predict_answers(model, dataset, batch_size)
    recs = dataset.records
    return {**vqa_report(preds, [r.answers for r in recs], [r.type for r in recs]), "loss": loss}


def fit_vqa(model: VQAModel, data: VQAData, cfg: VQAExperimentConfig, progress: bool = True,
            validate: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train with the generic Trainer; the best (or, without validation, the last) model is `model/`."""
    train_set = qa_dataset(model, data, cfg.data.train_split, train=True)
    val_set = qa_dataset(model, data, cfg.data.val_split)
    if data.report.count and progress:
        tqdm.write(data.report.summary())
    trainer = Trainer(model, train_set, cfg.train, collate=collate_qa, save_model=model.write_files, seed=cfg.seed,
                      evaluate=(lambda m: evaluate_vqa(m, val_set)) if validate else None,
                      run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_questions=len(train_set), answers=len(data.answers), skipped_records=data.report.count,
                   encoder_pretraining=data.pretraining,
                   trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    return summary


def train_vqa(cfg: VQAExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train a VQA model, calibrate the best one (temperature, OOD statistics, both saved with it), then score
    it on every test split; writes `{out_dir}/metrics.json`."""
    model, data = prepare_vqa(cfg, progress)
    summary = fit_vqa(model, data, cfg, progress, stop_at=stop_at)
    if stop_at is not None and summary.get("stopped_at"):
        return summary
    return finish_vqa(data, cfg, summary)


def finish_vqa(data: VQAData, cfg: VQAExperimentConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The end of a run: calibrate the best model in `{out_dir}/model` (temperature, OOD statistics, both saved
    with it), score it on every test split and write `{out_dir}/metrics.json` (`summary` plus all of that)."""
    model_dir = Path(cfg.train.out_dir) / "model"
    best = VQAModel.from_pretrained(model_dir)
    started = read_model_dir(model_dir)[0]["model"]["encoder"].get("pretrained")  # loading forgets it; keep it
    summary["calibration"] = calibrate_vqa(best, data, cfg)
    best.cfg.encoder.pretrained = started
    best.save_pretrained(model_dir)  # now with its temperature
    threshold = save_model_stats(best, model_dir, [r.image for r in data.splits.get(cfg.data.train_split, [])],
                                 [r.image for r in data.splits.get(cfg.data.val_split, [])])
    if threshold is not None:
        summary["ood_threshold"] = round(threshold, 4)
    for split in (s for s in cfg.data.test_splits if s in data.splits):
        summary[split] = evaluate_vqa(best, qa_dataset(best, data, split))
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


train_vqa.config_cls = VQAExperimentConfig  # type: ignore[attr-defined]
