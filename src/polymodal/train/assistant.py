"""Task `assistant`: train one instruction-following assistant on the instruction mixture.

config -> conversations (data/instructions.py: Shapes World scenes, or any caption dataset plus an
optional VQA question file) -> a word tokenizer with role markers -> InstructionAssistant (the image-prefix
LM) -> generic Trainer, loss on the assistant's replies only -> per-kind accuracy, follow-ups and declines
of the best model on the test splits (bench/assistant.py adds POPE, captions and the comparison). The best
model is then calibrated: the temperature and the "not sure" threshold of its reply confidence are fitted on
the validation conversations and saved in its config.json (`calibrate_assistant` does the same for a model
saved before this; bench/chat_confidence.py runs it and measures it, docs/reliability.md).

    polymodal train configs/assistant.yaml

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=assistant", "train.steps=10"])
    >>> task is train_assistant, cfg.data.instructions.conversations_per_image
    (True, 4)
    >>> task(cfg)["heldout"]["accuracy/count"]  # trains  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..api import load_expecting
from ..checkpoint import resolve_model_dir, write_json
from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.datasets import load_split, shapes_folder
from ..data.dialogue import DialogueRecord, build_chat_tokenizer, read_scenes, turn_messages
from ..data.grounding import RETRY, location_grid
from ..data.instructions import (
    SCOPE,
    InstructionConfig,
    InstructionDataset,
    collate_instructions,
    conversations_from_captions,
    conversations_from_qa,
    conversations_from_scenes,
)
from ..data.qa import ImageBank, read_qa
from ..data.records import SkipReport
from ..eval.assistant import Query, assistant_report, reply_correct, scene_queries, scored_queries
from ..eval.calibration import (
    choose_threshold,
    confidence_split,
    ece,
    fit_confidence_temperature,
    reliability_table,
)
from ..eval.ood import save_model_stats
from ..models.assistant import AssistantConfig, InstructionAssistant
from ..models.prefix_lm import PrefixConfig
from ..models.reply_confidence import ReplyCalibration
from ..text.tokenizer import WordTokenizer
from .prefix_lm import _pretrain_encoder
from .pretraining import PretrainConfig
from .trainer import Trainer


@dataclass
class InstructionDataConfig(DataConfig):
    qa_path: str | None = None        # a VQA JSON / JSONL file mixed in (non-Shapes data); Shapes World has its own
    test_splits: list[str] = field(default_factory=lambda: ["test", "heldout"])
    eval_images: int = 500            # test images scored per split at the end (0 = all)
    instructions: InstructionConfig = field(default_factory=InstructionConfig)


@dataclass
class AssistantExperimentConfig:
    task: str = "assistant"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    prefix: PrefixConfig = field(default_factory=lambda: PrefixConfig(pixel_shuffle=1))
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # steps > 0: start from a region encoder
    data: InstructionDataConfig = field(default_factory=InstructionDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/assistant"))
    init_from: str = ""               # a trained assistant (model or run directory) to go on training: its weights,
                                      # vocabulary and model config are kept; the schedule starts afresh


def split_captions(data: DataConfig, split: str, report: SkipReport) -> dict[str, list[str]]:
    """Image id -> reference captions of one split."""
    return {r.id: r.captions for r in load_split(data, split, report)}


def conversations(data: InstructionDataConfig, split: str, report: SkipReport) -> list[DialogueRecord]:
    """The mixture of one split: every kind on Shapes World; elsewhere describe + the VQA file's questions."""
    if data.format == "shapes":
        return conversations_from_scenes(shapes_folder(data), split, split_captions(data, split, report),
                                         data.instructions)
    out = conversations_from_captions(load_split(data, split, report))
    if data.qa_path:
        out += conversations_from_qa(read_qa(data.qa_path, images=data.images, split=split, report=report,
                                             allow_outside_root=data.allow_outside_root))
    return out


def mixture_tokenizer(convs: list[DialogueRecord], location_grid: int = 0) -> WordTokenizer:
    """Words of every request and reply, the role markers, and the location tokens replies point with. Out-of-scope
    requests made of unknown words stay out, so they read as <unk>: what any word it never saw (another language, a
    typo) looks like."""
    known = [DialogueRecord(d.id, d.image, [t for t in d.turns if t.kind != "scope" or t.question in SCOPE], d.split)
             for d in convs]
    return build_chat_tokenizer(known, location_grid=location_grid)


def instruction_sets(model: InstructionAssistant, splits: dict[str, list[DialogueRecord]], report: SkipReport,
                     progress: bool = True) -> dict[str, InstructionDataset]:
    """Each split's conversations as `model` is asked them (its tokenizer, positions and attention mask), over one
    ImageBank; a conversation whose image does not load is left out and counted in `report`."""
    bank = ImageBank([d.image for convs in splits.values() for d in convs], model.cfg.image_size, report=report,
                     progress=progress)
    sets = {}
    for split, convs in splits.items():
        good, rows = bank.keep(convs)
        sets[split] = InstructionDataset(good, rows, bank.__getitem__, model.tokenizer, model.cfg.decoder.max_positions,
                                         per_turn=model.prefix_cfg.bidirectional_prefix)
    return sets


@torch.inference_mode()
def masked_loss(model: InstructionAssistant, dataset: InstructionDataset, batch_size: int,
                max_batches: int) -> dict[str, float]:
    """Validation loss and next-token accuracy on the replies only."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_instructions)
    for batch in itertools.islice(loader, max_batches or None):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits, losses = model(batch)
        mask = batch["targets"] != model.tokenizer.pad_id
        n = int(mask.sum())
        total += float(losses["loss"]) * n
        correct += int(((logits.argmax(-1) == batch["targets"]) & mask).sum())
        count += n
    model.train()
    return {"loss": total / max(count, 1), "token_accuracy": correct / max(count, 1)}


def train_assistant(cfg: AssistantExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train the assistant as configured; the best model lands in `{train.out_dir}/model`."""
    report = SkipReport(source="instruction data")
    splits = {s: conversations(cfg.data, s, report) for s in (cfg.data.train_split, cfg.data.val_split)}
    torch.manual_seed(cfg.seed)
    if cfg.init_from:  # go on from a trained assistant, with its own vocabulary and config
        model = load_expecting(cfg.init_from, InstructionAssistant.architecture, "train one with "
                               "`polymodal train configs/assistant.yaml`, or leave init_from empty")
        tokenizer, model_cfg = model.tokenizer, model.cfg
        model.assistant_cfg.loss_per = cfg.assistant.loss_per  # how this run weighs its loss, not the model's
        if cfg.prefix.look_back and not model.prefix_cfg.look_back:
            model.add_look_back()  # grown onto the trained model: a no-op until it trains
    else:
        tokenizer = mixture_tokenizer(splits[cfg.data.train_split], cfg.data.instructions.location_grid)
        model_cfg = copy.deepcopy(cfg.model)
        _pretrain_encoder(cfg, model_cfg, progress)  # type: ignore[arg-type]  # reads pretrain, data, seed
        # its prompts keep at least the earlier turns its longest training conversations have
        earlier = max(cfg.assistant.max_earlier_turns, cfg.data.instructions.max_turns - 1)
        model = InstructionAssistant(model_cfg, tokenizer, cfg.prefix,
                                     dataclasses.replace(cfg.assistant, max_earlier_turns=earlier))
    if cfg.data.instructions.retry_share and location_grid(model.tokenizer):
        model.add_words([RETRY])  # replies learn to take a wrong point back (data/grounding.py)
    sets = instruction_sets(model, splits, report, progress)
    if report.count:
        tqdm.write(report.summary())
    val = sets[cfg.data.val_split]
    trainer = Trainer(model, sets[cfg.data.train_split], cfg.train, collate=collate_instructions,
                      save_model=model.write_files, seed=cfg.seed, run_config=dataclasses.asdict(cfg), progress=progress,
                      evaluate=lambda m: masked_loss(m, val, cfg.train.batch_size, cfg.train.eval_batches))
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_conversations=len(sets[cfg.data.train_split]), vocab_size=len(tokenizer),
                   parameters=sum(p.numel() for p in model.parameters()))
    best = Path(cfg.train.out_dir) / "model"
    if stop_at is not None and summary.get("stopped_at") or not best.is_dir():
        return summary
    trained = InstructionAssistant.from_pretrained(best).eval()
    summary["ood_threshold"] = save_model_stats(  # replies about an image unlike these say so
        trained, best, [d.image for d in splits[cfg.data.train_split]], [d.image for d in splits[cfg.data.val_split]])
    summary["calibration"] = calibrate_and_save(trained, cfg, best, report, progress)  # "not sure" below a threshold
    if cfg.data.format != "shapes":
        return summary
    summary.update(evaluate_splits(trained, cfg, report, progress))
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


def evaluate_splits(model: InstructionAssistant, cfg: AssistantExperimentConfig, report: SkipReport,
                    progress: bool = True) -> dict[str, Any]:
    """Per-kind accuracy, follow-ups, declines and captions of `model` on each test split (Shapes World)."""
    folder = shapes_folder(cfg.data)
    out = {}
    for split in cfg.data.test_splits:
        captions = split_captions(cfg.data, split, report)
        paths = [image for _, image, _ in read_scenes(folder, split)][: cfg.data.eval_images or None]
        bank = ImageBank(paths, model.cfg.image_size, report=report, progress=progress)
        out[split] = assistant_report(model, folder, split, captions, lambda path, bank=bank: bank[bank.index[path]],
                                      cfg.data.eval_images, progress=progress)
    return out


def mixture_queries(convs: list[DialogueRecord]) -> list[Query]:
    """Every turn of these conversations as a request, asked after the reference turns before it."""
    return [Query(d.image, turn_messages(d.turns, t), d.turns[t].kind, d.turns[t].answer, points=d.turns[t].points)
            for d in convs for t in range(len(d.turns))]


def split_queries(cfg: AssistantExperimentConfig, split: str, report: SkipReport,
                  limit: int = 0) -> tuple[list[Query], Callable[[str], torch.Tensor]]:
    """The requests of one split to score replies on, and `image(path)` -> uint8 (3, S, S). Shapes World: the
    evaluation's queries (eval.assistant.scene_queries) of its first `limit` images; elsewhere every turn of
    the split's conversations, with the reference turns before it.

    Example:
        >>> queries, image = split_queries(cfg, "val", SkipReport(source="val"), limit=10)  # doctest: +SKIP
        >>> image(queries[0].image).shape  # doctest: +SKIP
        torch.Size([3, 64, 64])
    """
    if cfg.data.format == "shapes":
        scenes = read_scenes(shapes_folder(cfg.data), split)[: limit or None]
        queries = scene_queries(scenes, split_captions(cfg.data, split, report))
    else:
        queries = mixture_queries(conversations(cfg.data, split, report)[: limit or None])
    bank = ImageBank(sorted({q.image for q in queries}), cfg.model.image_size, report=report, progress=False)
    return [q for q in queries if q.image in bank.index], lambda path: bank[bank.index[path]]


def reply_calibration(model: InstructionAssistant, queries: list[Query], image: Callable[[str], torch.Tensor],
                      fit: bool = False, progress: bool = True) -> dict[str, Any]:
    """`reply_figures` of the model's greedy replies to these queries (fitting its calibration first with `fit`).

    Example:
        >>> reply_calibration(model, *split_queries(cfg, "test", report))["ece_after"]  # doctest: +SKIP
        0.0313
    """
    replies, scores = scored_queries(model, queries, image, progress=progress)
    return reply_figures(model, queries, replies, scores, fit)


def reply_figures(model: InstructionAssistant, queries: list[Query], replies: list[str], scores: Any,
                  fit: bool = False, method: str = "sequence", accuracy: float = 0.5) -> dict[str, Any]:
    """ECE of the reply confidence before (T = 1) and after the model's temperature, the share "not sure" and the
    accuracy on each side of its threshold, for replies and their `scores` (eval.assistant.scored_queries). With
    `fit`, first set the model's calibration from them: the temperature minimising the NLL of right/wrong, and the
    threshold below which replies are right less often than `accuracy` (eval.calibration.choose_threshold).

    Example:
        >>> replies, scores = scored_queries(model, queries, image)  # doctest: +SKIP
        >>> reply_figures(model, queries, replies, scores, fit=True)["threshold"]  # doctest: +SKIP
        0.53861
    """
    hit = [reply_correct(q, r) for q, r in zip(queries, replies, strict=True)]
    if fit:
        t = fit_confidence_temperature(lambda t: scores.confidence(t, method), hit)
        threshold = choose_threshold(scores.confidence(t, method), hit, accuracy)
        model.calibration = ReplyCalibration(round(t, 6), threshold, method)
    cal = model.calibration or ReplyCalibration()
    after = scores.confidence(cal.temperature, cal.method)
    out: dict[str, Any] = {"replies": len(hit), "accuracy": round(sum(hit) / max(len(hit), 1), 4),
                           "temperature": cal.temperature, "threshold": cal.threshold,
                           "ece_before": round(ece(scores.confidence(1.0, cal.method), hit), 4),
                           "ece_after": round(ece(after, hit), 4)}
    if cal.threshold is not None:
        out |= confidence_split(after, hit, cal.threshold)
    return out | {"reliability": reliability_table(after, hit, bins=10)}


def save_calibration(model: InstructionAssistant, model_dir: str | Path) -> None:
    """Set the "calibration" section of the model's saved config.json; the rest of it, the weights and the other
    files stay as they are.

    Example:
        >>> save_calibration(model, "runs/assistant/model")  # doctest: +SKIP
    """
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    write_json(path, {**config, "calibration": model.config_dict()["calibration"]})


def calibrate_and_save(model: InstructionAssistant, cfg: AssistantExperimentConfig, model_dir: str | Path,
                       report: SkipReport, progress: bool = True, limit: int = 0) -> dict[str, Any]:
    """Fit the reply calibration on the validation split (first `limit` images; 0 = all) and write it into
    `model_dir`/config.json (nothing else there changes). Returns the temperature, threshold and fit figures.

    Example:
        >>> calibrate_and_save(model, cfg, "runs/assistant/model", report)["temperature"]  # doctest: +SKIP
        0.921118
    """
    queries, image = split_queries(cfg, cfg.data.val_split, report, limit)
    fitted = reply_calibration(model, queries, image, fit=True, progress=progress)
    save_calibration(model, model_dir)
    return {"temperature": fitted["temperature"], "threshold": fitted["threshold"], "val": fitted}


def calibrate_assistant(model_dir: str | Path, config: str | Path | None = "configs/assistant.yaml",
                        overrides: list[str] | None = None, progress: bool = True, limit: int = 0) -> dict[str, Any]:
    """Calibrate an assistant saved before calibration existed, without retraining: its reply temperature and
    "not sure" threshold are fitted on the validation split of the data it was trained on (`config` and
    `overrides`, as given to `polymodal train`) and saved in its config.json.

    Example:
        >>> calibrate_assistant("runs/assistant/model")["threshold"]  # doctest: +SKIP
        0.41
    """
    from .tasks import load_task_config

    _, cfg = load_task_config(config, ["task=assistant", *(overrides or [])])
    model_dir = resolve_model_dir(model_dir)
    model = InstructionAssistant.from_pretrained(model_dir)
    return calibrate_and_save(model, cfg, model_dir, SkipReport(source="instruction data"), progress, limit)


train_assistant.config_cls = AssistantExperimentConfig  # type: ignore[attr-defined]
