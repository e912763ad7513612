"""The `video_caption` and `video_qa` training tasks on Shapes World video (mp4 with sound).

config -> the clip folder (written once under the cache, or `data.path`) -> every clip decoded once
(frames -> the frozen, scene-pretrained image encoder's features; audio track -> log-mel; cached) ->
model -> the generic Trainer -> scores of the best model on the test clips in `{out_dir}/metrics.json`.

video_caption: BLEU-1..4, METEOR, ROUGE-L, CIDEr of event captions and of summaries, and the event-time
hit rate (an annotated event start with a predicted start within `tolerance` seconds).
Under "structured": the events read back out of the generated captions, matched with the annotated
ones and scored (precision / recall, sides, summary kinds, time error; see eval/video_events.py).
video_qa: accuracy overall, per question type, and on audio-only vs visual questions.

Example:
    $ polymodal train configs/video_caption.yaml model.media.modalities=[video]
    $ polymodal train configs/video_qa.yaml
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import write_json
from ..config import TrainConfig
from ..data.clips import ClipBank, ClipCaptionDataset, ClipQADataset, event_fields, read_annotations
from ..data.datasets import cache_root
from ..data.shapes_video import write_shapes_video
from ..errors import PolymodalError
from ..eval.caption_metrics import caption_metrics
from ..eval.ood import fit_clip_stats
from ..eval.video_events import score_events, score_reads
from ..eval.vqa_metrics import vqa_accuracy
from ..generate import GenerationConfig
from ..models.video_captioner import VideoCaptioner, VideoCaptionerConfig, pick_peaks
from ..models.video_qa import VideoQA, VideoQAConfig
from ..nn.media import MediaConfig
from ..text.tokenizer import WordTokenizer
from .pretraining import PretrainConfig, QADataConfig, pretrain_region_encoder
from .trainer import Trainer


@dataclass
class VideoDataConfig:
    path: str | None = None           # a Shapes World video folder; default: written once under the cache
    n: int = 1200                     # clips in train + val + test
    seed: int = 0
    render_size: int = 64
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_len: int = 40                 # caption tokens, <bos>/<eos> included
    question_len: int = 12
    cache_features: bool = True       # frozen encoder: keep per-frame features, not frames
    tolerance: float = 0.25           # event-time hit: seconds between a predicted and an annotated start
    read_events: bool = True          # captioning: learn the clips' per-event annotations at every time step
                                      # (model.event_fields, the EventReader) when the clips have them


@dataclass
class VideoCaptionExperimentConfig:
    task: str = "video_caption"
    seed: int = 0
    model: VideoCaptionerConfig = field(default_factory=VideoCaptionerConfig)
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=300))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/video_caption"))


@dataclass
class VideoQAExperimentConfig:
    task: str = "video_qa"
    seed: int = 0
    model: VideoQAConfig = field(default_factory=VideoQAConfig)
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=300))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/video_qa"))


def video_folder(data: VideoDataConfig, progress: bool = True) -> Path:
    """The clip folder: `data.path` as given, or Shapes World video written once under the cache."""
    if data.path:
        return Path(data.path)
    folder = cache_root() / f"shapes-video-n{data.n}-seed{data.seed}-px{data.render_size}"
    return write_shapes_video(folder, n=data.n, seed=data.seed, size=data.render_size, progress=progress)


def prepare_media(media: MediaConfig, pretrain: PretrainConfig, seed: int, progress: bool) -> None:
    """Pretrain the frame encoder on Shapes World scene attributes (cached, shared with VQA) if asked."""
    if pretrain.steps and "video" in media.modalities and not media.encoder.pretrained:
        media.encoder.pretrained = str(pretrain_region_encoder(media.encoder, media.image_size, QADataConfig(),
                                                               pretrain, seed, progress))


def build_bank(model: Any, clips: list[dict], folder: Path, data: VideoDataConfig, progress: bool) -> ClipBank:
    media = model.cfg.media
    frozen = "video" in media.modalities and not any(p.requires_grad for p in model.media.encoder.parameters())
    encode = model.media.frame_features if (frozen and data.cache_features) else None
    key = str(media.encoder.pretrained or "") + str(dataclasses.asdict(media.encoder)) + str(media.grid)
    return ClipBank.build(clips, folder, media.frames, media.image_size, media.mel, encode,
                          cache_root() / "video-clips", key, progress, video="video" in media.modalities)


def _splits(cfg: Any, progress: bool) -> tuple[Path, dict[str, list[dict]]]:
    folder = video_folder(cfg.data, progress)
    names = (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split)
    return folder, {s: read_annotations(folder, s) for s in names}


# ----------------------------------------------------------------------------- captioning
def prepare_video_caption(cfg: VideoCaptionExperimentConfig, progress: bool = True
                          ) -> tuple[VideoCaptioner, dict[str, list[dict]], ClipBank]:
    cfg = copy.deepcopy(cfg)
    folder, splits = _splits(cfg, progress)
    train = splits[cfg.data.train_split]
    tokenizer = WordTokenizer.build([c["caption"] for c in train] + [c["summary"] for c in train])
    if cfg.data.read_events and not cfg.model.event_fields:
        cfg.model.event_fields = event_fields(train)
    prepare_media(cfg.model.media, cfg.pretrain, cfg.seed, progress)
    torch.manual_seed(cfg.seed)
    model = VideoCaptioner(cfg.model, tokenizer)
    bank = build_bank(model, [c for s in splits.values() for c in s], folder, cfg.data, progress)
    return model, splits, bank


INPUT_KEYS = {"frames": "video", "frame_features": "video", "mel": "audio"}  # batch key -> its modality


@torch.inference_mode()
def evaluate_video_captions(model: VideoCaptioner, clips: list[dict], bank: ClipBank, tolerance: float = 0.25,
                            beam_size: int = 3, batch_size: int = 50,
                            inputs: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Caption metrics of event captions and summaries, the event-time hit rate, and under "structured" the
    events read back out of the captions and scored (`eval.video_events.score_events`), on `clips`.

    `inputs` keeps only some modalities of each clip (("video",): the clips as silent videos; ("audio",):
    their sound alone), to score one checkpoint on every kind of input it accepts."""
    gen = GenerationConfig(strategy="beam" if beam_size > 1 else "greedy", beam_size=beam_size,
                           max_len=model.cfg.decoder.max_len)
    out: dict[str, Any] = {"clips": len(clips)}
    hits = even_hits = total = 0
    examples = []
    generated: dict[str, dict[str, str]] = {}
    picked_times: dict[str, list[float]] = {}
    reads: dict[str, list[dict]] = {}
    read_times: dict[str, list[float]] = {}
    for mode, key in (("events", "caption"), ("summary", "summary")):
        results = {}
        for i in range(0, len(clips), batch_size):
            chunk = clips[i:i + batch_size]
            rows = [bank.row[c["id"]] for c in chunk]
            batch = {k: v.to(model.device) for k, v in bank.inputs(rows).items()
                     if inputs is None or INPUT_KEYS[k] in inputs}
            for c, text in zip(chunk, model.caption_batch(batch, mode, gen), strict=True):
                results[c["id"]] = text
            if mode == "events":  # event times: the k most likely starts, k = annotated events
                times = bank.tensors["times"][rows]
                for c, r, t in zip(chunk, model.read_events(batch) or [], times, strict=False):
                    reads[c["id"]], read_times[c["id"]] = r, t.tolist()
                probs = model.event_probs(batch, times.shape[1]).cpu()
                for c, p, t in zip(chunk, probs, times, strict=True):
                    k = len(c["events"])
                    picked = t[pick_peaks(p, k)]
                    picked_times[c["id"]] = picked.tolist()
                    even = t[((torch.arange(k) + 0.5) * len(t) / k).long()]  # baseline: k evenly spaced times
                    for e in c["events"]:
                        hits += int(bool(((picked - e["time"]).abs() <= tolerance).any()))
                        even_hits += int(bool(((even - e["time"]).abs() <= tolerance).any()))
                        total += 1
        out[mode] = caption_metrics(results, {c["id"]: [c[key]] for c in clips})
        generated[mode] = results
        examples += [{"id": c["id"], "mode": mode, "reference": c[key], "generated": results[c["id"]]}
                     for c in clips[:3]]
    out["event_time_hit_rate"] = hits / max(total, 1)
    out["event_time_hit_rate_evenly_spaced"] = even_hits / max(total, 1)
    out["structured"] = score_events(generated["events"], clips, generated["summary"], picked_times)
    if reads:
        out["reader"] = score_reads(reads, clips, read_times)
    out["examples"] = examples
    model.train()
    return out


def save_clip_stats(model: Any, folder: Path, bank: ClipBank, train: list[dict], calibration: list[dict],
                    batch_size: int = 100, limit: int = 2000) -> dict[str, float]:
    """Fit and save a trained video model's per-modality OOD statistics (eval/ood.py `fit_clip_stats`) on
    (up to `limit`) training clips, thresholds on held-out ones; returns each modality's threshold ({} and a
    message when the clips are too few to fit them, as `save_model_stats` does)."""
    def batches(clips: list[dict]) -> Any:
        for i in range(0, len(clips), batch_size):
            rows = [bank.row[c["id"]] for c in clips[i:i + batch_size]]
            yield {k: v.to(model.device) for k, v in bank.inputs(rows).items()}

    try:
        stats = fit_clip_stats(model, batches(train[:limit]), batches(calibration))
    except PolymodalError as err:  # too few clips: trained all the same, only the inputs go unchecked
        tqdm.write(f"out-of-distribution statistics: skipped ({err})")
        return {}
    for name, s in stats.items():
        s.save(folder, name)
    return {name: round(s.threshold, 3) for name, s in stats.items()}


def validation_loss(model: Any, dataset: Any, batch_size: int = 256) -> dict[str, float]:
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            _, losses = model(batch)
            total += float(losses["loss"]) * len(batch["tokens"])
            n += len(batch["tokens"])
    model.train()
    return {"loss": total / max(n, 1)}


def _fit(model: Any, train_set: Any, val_set: Any, cfg: Any, progress: bool, stop_at: int | None) -> dict[str, Any]:
    trainer = Trainer(model, train_set, cfg.train, collate=train_set.collate, save_model=model.write_files,
                      seed=cfg.seed, evaluate=lambda m: validation_loss(m, val_set),
                      run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_items=len(train_set), vocab_size=len(model.tokenizer),
                   trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    return summary


def train_video_caption(cfg: VideoCaptionExperimentConfig, progress: bool = True,
                        stop_at: int | None = None) -> dict[str, Any]:
    """Train a video captioner; score the best one on the test clips; writes `{out_dir}/metrics.json`."""
    model, splits, bank = prepare_video_caption(cfg, progress)
    d = cfg.data
    fields = model.cfg.event_fields
    train_set = ClipCaptionDataset(splits[d.train_split], bank, model.tokenizer, d.max_len, fields=fields)
    val_set = ClipCaptionDataset(splits[d.val_split], bank, model.tokenizer, d.max_len, fields=fields)
    summary = _fit(model, train_set, val_set, cfg, progress, stop_at)
    if stop_at is not None and summary.get("stopped_at"):
        return summary
    best = VideoCaptioner.from_pretrained(Path(cfg.train.out_dir) / "model")
    summary["ood_thresholds"] = save_clip_stats(best, Path(cfg.train.out_dir) / "model", bank,
                                                splits[d.train_split], splits[d.val_split])
    summary["test"] = evaluate_video_captions(best, splits[d.test_split], bank, d.tolerance)
    if best.cfg.media.missing_token and len(best.cfg.media.modalities) > 1:  # one checkpoint, each input alone
        summary["test_by_input"] = {m: evaluate_video_captions(best, splits[d.test_split], bank, d.tolerance,
                                                               inputs=(m,)) for m in best.cfg.media.modalities}
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


train_video_caption.config_cls = VideoCaptionExperimentConfig  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- QA
def prepare_video_qa(cfg: VideoQAExperimentConfig, progress: bool = True
                     ) -> tuple[VideoQA, dict[str, list[dict]], ClipBank]:
    cfg = copy.deepcopy(cfg)
    folder, splits = _splits(cfg, progress)
    train_q = [q for c in splits[cfg.data.train_split] for q in c["questions"]]
    tokenizer = WordTokenizer.build(q["question"] for q in train_q)
    answers = sorted({q["answer"] for q in train_q})
    prepare_media(cfg.model.media, cfg.pretrain, cfg.seed, progress)
    torch.manual_seed(cfg.seed)
    model = VideoQA(cfg.model, tokenizer, answers)
    bank = build_bank(model, [c for s in splits.values() for c in s], folder, cfg.data, progress)
    return model, splits, bank


@torch.inference_mode()
def evaluate_video_qa(model: VideoQA, dataset: ClipQADataset, batch_size: int = 256,
                      inputs: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Accuracy overall, on audio-only and on visual questions, and per question type; `inputs` keeps only
    some modalities of each clip (as `evaluate_video_captions`)."""
    model.eval()
    preds: list[str] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate):
        batch = {k: v.to(model.device) for k, v in batch.items()
                 if inputs is None or k not in INPUT_KEYS or INPUT_KEYS[k] in inputs}
        logits, _ = model(batch)
        preds += [model.answers[int(i)] for i in logits.argmax(-1)]
    groups: dict[str, list[float]] = defaultdict(list)
    for p, q in zip(preds, dataset.questions, strict=True):
        score = vqa_accuracy(p, [q["answer"]])
        groups["accuracy"].append(score)
        groups["accuracy/" + ("audio_only" if q["audio_only"] else "visual")].append(score)
        groups["accuracy/" + q["type"]].append(score)
    model.train()
    return {"questions": len(preds), **{k: sum(v) / len(v) for k, v in sorted(groups.items())}}


def train_video_qa(cfg: VideoQAExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train a video QA model; score the best one on the test clips; writes `{out_dir}/metrics.json`."""
    model, splits, bank = prepare_video_qa(cfg, progress)
    d = cfg.data
    train_set = ClipQADataset(splits[d.train_split], bank, model.tokenizer, model.answers, d.question_len)
    val_set = ClipQADataset(splits[d.val_split], bank, model.tokenizer, model.answers, d.question_len)
    summary = _fit(model, train_set, val_set, cfg, progress, stop_at)
    summary["answers"] = len(model.answers)
    if stop_at is not None and summary.get("stopped_at"):
        return summary
    best = VideoQA.from_pretrained(Path(cfg.train.out_dir) / "model")
    summary["ood_thresholds"] = save_clip_stats(best, Path(cfg.train.out_dir) / "model", bank,
                                                splits[d.train_split], splits[d.val_split])
    test_set = ClipQADataset(splits[d.test_split], bank, best.tokenizer, best.answers, d.question_len)
    summary["test"] = evaluate_video_qa(best, test_set)
    if best.cfg.media.missing_token and len(best.cfg.media.modalities) > 1:  # one checkpoint, each input alone
        summary["test_by_input"] = {m: evaluate_video_qa(best, test_set, inputs=(m,)) for m in best.cfg.media.modalities}
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


train_video_qa.config_cls = VideoQAExperimentConfig  # type: ignore[attr-defined]
