"""The `spoken_vqa` training task: answer spoken questions about images end to end (no transcript).

config -> spoken Shapes World questions (data/spoken_qa.py, written into the cache once; test voices held out)
-> SpokenVQAModel.from_parts(a trained text VQA model, a trained recognizer) -> the recognizer's frozen front-end
states and the frozen image features computed once -> generic Trainer (the adapter, fusion and classifier
learn) -> temperature fitted on val -> test accuracy per question type and clean / noisy -> metrics.json.

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=spoken_vqa", "train.steps=100"])  # or "configs/spoken_vqa.yaml"
    >>> task is train_spoken_vqa, cfg.data.train
    (True, 8000)
    >>> task(cfg)["test"]["accuracy"]  # synthesizes speech, then trains for minutes  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..api import load
from ..checkpoint import write_json
from ..config import TrainConfig
from ..data.cache import weights_hash
from ..data.datasets import cache_root
from ..data.qa import answer_targets
from ..data.records import SkipReport
from ..data.spoken_qa import DEFAULT_SIZES, SpokenQARecord, read_spoken_qa, spoken_qa_folder, write_spoken_qa
from ..errors import ConfigError
from ..eval.calibration import ece, fit_temperature
from ..eval.ood import save_model_stats
from ..eval.vqa_metrics import vqa_accuracy, vqa_report
from ..models.asr import SpeechRecognizer, pad_mels
from ..models.spoken_vqa import SpeechQuestionEncoder, SpokenVQAModel, load_wave
from ..models.vqa import VQAModel
from ..nn.question import QuestionEncoderConfig
from .pretraining import QADataConfig, build_bank, shapes_dir
from .trainer import Trainer

BUNDLED = "bundled"  # init_vqa / recognizer: the model shipped in polymodal/assets


@dataclass
class SpokenQADataConfig:
    world_n: int = 5000               # the Shapes World whose questions are spoken (the bundled VQA's: n=5000, seed 0)
    world_seed: int = 0
    path: str | None = None           # a folder written by write_spoken_qa; None: written into the cache
    train: int = DEFAULT_SIZES["train"]  # questions spoken per split (train and val: TRAIN_VOICES; test: TEST_VOICES)
    val: int = DEFAULT_SIZES["val"]
    test: int = DEFAULT_SIZES["test"]
    seed: int = 0                     # which questions, and how each is voiced


@dataclass
class SpokenVQAExperimentConfig:
    task: str = "spoken_vqa"
    seed: int = 0
    init_vqa: str = BUNDLED           # text VQA model: its image side, fusion, classifier and answers start the model
    recognizer: str = BUNDLED         # speech recognizer whose front end (conv subsampling + BiLSTM) hears the question
    freeze_speech: bool = True        # frozen: its states are computed once and cached
    pool: int = 2                     # front-end frames averaged into one question token
    adapter: QuestionEncoderConfig = field(default_factory=lambda: QuestionEncoderConfig(hidden_dim=128, layers=1))
    data: SpokenQADataConfig = field(default_factory=SpokenQADataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/spoken_vqa"))


def model_folder(name: str, bundled: str) -> Path:
    """A model folder from the config ("bundled": the one shipped in polymodal/assets)."""
    from ..assets import ASSETS

    return ASSETS / bundled if name == BUNDLED else Path(name)


def spoken_records(data: SpokenQADataConfig, progress: bool = True) -> dict[str, list[SpokenQARecord]]:
    """The spoken questions per split (written into the cache on first use)."""
    sizes = {"train": data.train, "val": data.val, "test": data.test}
    if data.path:
        folder = Path(data.path)
    else:
        world = shapes_dir(QADataConfig(format="shapes", n=data.world_n, seed=data.world_seed))
        folder = write_spoken_qa(spoken_qa_folder(world, sizes, data.seed), world, sizes, data.seed, progress)
    return {s: read_spoken_qa(folder, s) for s in sizes}


@torch.inference_mode()
def speech_states(encoder: SpeechQuestionEncoder, audio: list[str], batch_size: int = 64,
                  progress: bool = True) -> list[torch.Tensor]:
    """The front end's states (T'_i, S) of each audio file, float16, in order; cached under the cache root,
    keyed by the front end's weights and the file list."""
    key = hashlib.sha256((weights_hash(encoder.subsample) + weights_hash(encoder.encoder)
                          + "\n".join(audio)).encode()).hexdigest()[:24]
    path = cache_root() / "spoken-vqa-states" / f"{key}.safetensors"
    if path.is_file():
        flat = load_file(str(path))
        return list(flat["states"].split(flat["lengths"].tolist()))
    was_training = encoder.training
    encoder.eval()
    order = sorted(range(len(audio)), key=lambda i: audio[i])
    out: list[torch.Tensor] = [torch.zeros(0)] * len(audio)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="speech states", unit="batch"):
        rows = order[start:start + batch_size]
        mel, lengths = pad_mels([encoder.features(load_wave(audio[i], None)) for i in rows])
        states, lengths = encoder.states(mel, lengths)
        for r, i in enumerate(rows):
            out[i] = states[r, :int(lengths[r])].half().clone()
    encoder.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": torch.cat(out), "lengths": torch.tensor([len(s) for s in out])}, str(path))
    return out


class SpokenQADataset(Dataset):
    """Items {"image" (features), "states" (T', S) or "mel", "targets", "index"} of spoken questions."""

    def __init__(self, records: list[SpokenQARecord], images: list[torch.Tensor], answers: list[str],
                 states: list[torch.Tensor] | None, encoder: SpeechQuestionEncoder | None = None):
        self.records, self.images, self.states, self.encoder = records, images, states, encoder
        self.targets = [answer_targets(answers, r.answers) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"image": self.images[i], "targets": self.targets[i], "index": i}
        if self.states is not None:
            item["states"] = self.states[i]
        else:  # an unfrozen front end learns: its input is the log-mel
            item["mel"] = self.encoder.features(load_wave(self.records[i].audio, None))
        return item


def collate_spoken_qa(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch items: "image_features", "speech_states" + "speech_lengths" (or "mel" + "mel_lengths"), "targets"."""
    batch = {"skipped": torch.tensor(0), "image_features": torch.stack([it["image"] for it in items]).float(),
             "targets": torch.stack([it["targets"] for it in items]),
             "index": torch.tensor([it["index"] for it in items])}
    if "states" in items[0]:
        lengths = torch.tensor([len(it["states"]) for it in items])
        states = torch.zeros(len(items), int(lengths.max()), items[0]["states"].shape[-1])
        for r, it in enumerate(items):
            states[r, :len(it["states"])] = it["states"].float()
        batch.update(speech_states=states, speech_lengths=lengths)
    else:
        batch["mel"], batch["mel_lengths"] = pad_mels([it["mel"] for it in items])
    return batch


@torch.inference_mode()
def collect_logits(model: SpokenVQAModel, dataset: SpokenQADataset, batch_size: int = 256) -> torch.Tensor:
    """Raw logits (N, A) of every item, in order."""
    was_training = model.training
    model.eval()
    out = [model({k: v.to(model.device) for k, v in b.items() if k not in ("skipped", "index")})[0].float().cpu()
           for b in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_spoken_qa)]
    model.train(was_training)
    return torch.cat(out)


def evaluate_spoken(model: SpokenVQAModel, dataset: SpokenQADataset) -> dict[str, Any]:
    """VQA accuracy overall, per question type and for clean / noisy speech, and the loss."""
    logits = collect_logits(model, dataset)
    targets = torch.stack(dataset.targets)
    p = targets / targets.sum(-1, keepdim=True).clamp_min(1e-9)
    loss = float(-(p * logits.log_softmax(-1)).sum(-1).mean())
    preds = [model.answers[i] for i in logits.argmax(-1).tolist()]
    recs = dataset.records
    report = {**vqa_report(preds, [r.answers for r in recs], [r.type for r in recs]), "loss": round(loss, 4)}
    for name, keep in (("clean", True), ("noisy", False)):
        idx = [i for i, r in enumerate(recs) if r.clean == keep]
        if idx:
            report[f"accuracy/{name}"] = vqa_report([preds[i] for i in idx], [recs[i].answers for i in idx])["accuracy"]
    return report


def prepare(cfg: SpokenVQAExperimentConfig, progress: bool = True) -> tuple[SpokenVQAModel, dict[str, SpokenQADataset]]:
    """The model (from the text VQA model and the recognizer) and a dataset per split, features cached."""
    vqa, asr = load(model_folder(cfg.init_vqa, "shapes_vqa")), load(model_folder(cfg.recognizer, "shapes_asr"))
    if not isinstance(vqa, VQAModel) or isinstance(vqa, SpokenVQAModel) or not isinstance(asr, SpeechRecognizer):
        raise ConfigError(f"init_vqa must be a text VQA model and recognizer a speech recognizer (got "
                          f"{vqa.architecture!r}, {asr.architecture!r})")
    torch.manual_seed(cfg.seed)
    model = SpokenVQAModel.from_parts(vqa, asr, cfg.adapter, cfg.freeze_speech, cfg.pool)
    model.cfg.encoder.freeze = True  # the image features are computed once
    model.encoder.requires_grad_(False)
    splits = spoken_records(cfg.data, progress)
    report = SkipReport(source="spoken questions")
    paths = [r.image for recs in splits.values() for r in recs]
    bank = build_bank(paths, model.cfg.encoder, model.encoder, model.cfg.image_size, QADataConfig(), report, progress)
    sets = {}
    for split, recs in splits.items():
        recs, rows = bank.keep(recs)
        states = speech_states(model.question, [r.audio for r in recs], progress=progress) if cfg.freeze_speech \
            else None
        sets[split] = SpokenQADataset(recs, [bank[i] for i in rows], model.answers, states, model.question)
    if report.count:
        tqdm.write(report.summary())
    return model, sets


def train_spoken_vqa(cfg: SpokenVQAExperimentConfig, progress: bool = True) -> dict[str, Any]:
    """Train, calibrate the best model (temperature, OOD image statistics), score it on test; writes metrics.json."""
    model, sets = prepare(cfg, progress)
    start = {"val": evaluate_spoken(model, sets["val"])["accuracy"]}  # before training: the text fusion on speech
    trainer = Trainer(model, sets["train"], cfg.train, collate=collate_spoken_qa, save_model=model.write_files,
                      seed=cfg.seed, evaluate=lambda m: evaluate_spoken(m, sets["val"]),
                      run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit()
    out = Path(cfg.train.out_dir)
    best = SpokenVQAModel.from_pretrained(out / "model")
    logits, targets = collect_logits(best, sets["val"]), torch.stack(sets["val"].targets)
    known = targets.sum(-1) > 0
    best.temperature = fit_temperature(logits[known], targets[known].argmax(-1)) if bool(known.any()) else 1.0
    best.save_pretrained(out / "model")
    test_logits = collect_logits(best, sets["test"])
    correct = [vqa_accuracy(best.answers[a], ref) for a, ref in
               zip(test_logits.argmax(-1).tolist(), [r.answers for r in sets["test"].records], strict=True)]
    summary.update(
        val_accuracy_before_training=start["val"], train_questions=len(sets["train"]),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        calibration={"temperature": round(best.temperature, 4),
                     "test_ece_before": ece(test_logits.softmax(-1).max(-1).values, correct),
                     "test_ece_after": ece((test_logits / best.temperature).softmax(-1).max(-1).values, correct)},
        test=evaluate_spoken(best, sets["test"]))
    save_model_stats(best, out / "model", [r.image for r in sets["train"].records],
                     [r.image for r in sets["val"].records])
    write_json(out / "metrics.json", summary)
    return summary


train_spoken_vqa.config_cls = SpokenVQAExperimentConfig  # type: ignore[attr-defined]
