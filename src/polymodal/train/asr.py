"""The `asr` training task: a CTC speech recognizer on spoken Shapes World (or any speech manifest / LibriSpeech folder).

config -> the speech folder (spoken Shapes World written once under the cache, or `data.path`) -> every
utterance's normalised log-mel computed once and kept in memory -> `SpeechRecognizer` (SpecAugment while
training) -> the generic Trainer, early stopping on validation CER -> WER and CER of the best model on the
test split (spoken Shapes World: voices never heard in training), overall, clean vs noisy and per SNR,
greedy and beam + lexicon, in `{out_dir}/metrics.json`.

The Trainer keeps the checkpoint whose metric is best, larger being better unless the name says loss;
so validation reports `char_accuracy` = 1 - CER, and stopping on it is stopping on CER.

Example:
    $ OMP_NUM_THREADS=1 polymodal train configs/asr.yaml
    $ polymodal transcribe runs/asr/model question.wav
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..checkpoint import write_json
from ..config import TrainConfig
from ..data.datasets import cache_root
from ..data.records import SkipReport
from ..data.speech import write_shapes_speech
from ..data.speech_formats import SpeechRecord, load_speech, read_speech
from ..errors import DataError
from ..eval.asr_metrics import character_error_rate, word_error_rate
from ..eval.ood import save_model_stats
from ..models.asr import ASRConfig, SpeechRecognizer, pad_mels
from ..text.ctc import Lexicon
from .trainer import Trainer


@dataclass
class ASRDataConfig:
    path: str | None = None           # a speech manifest / folder / LibriSpeech tree; default spoken Shapes World
    n: int = 3000                     # spoken Shapes World utterances in train + val + test
    seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_seconds: float = 20.0         # longer utterances are skipped (and counted)
    bucket: int = 50                  # batches drawn from runs of bucket x batch_size utterances sorted by length


@dataclass
class ASRExperimentConfig:
    task: str = "asr"
    seed: int = 0
    model: ASRConfig = field(default_factory=ASRConfig)
    data: ASRDataConfig = field(default_factory=ASRDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/asr", early_stop_metric="val_char_accuracy", eval_batches=0))


def speech_folder(data: ASRDataConfig, progress: bool = True) -> Path:
    """`data.path` as given, or spoken Shapes World written once under the cache."""
    if data.path:
        return Path(data.path)
    return write_shapes_speech(cache_root() / f"shapes-speech-n{data.n}-seed{data.seed}", n=data.n, seed=data.seed,
                               progress=progress)


def manifest_rows(folder: Path) -> dict[str, dict]:
    """The manifest.jsonl objects of a folder by record id (for its snr_db and voice); empty when there is none."""
    manifest = folder / "manifest.jsonl" if folder.is_dir() else folder
    if manifest.suffix != ".jsonl" or not manifest.is_file():
        return {}
    rows = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("audio"), str):
            rows[str(row.get("id") or Path(row["audio"]).stem)] = row
    return rows


class Utterances(Dataset):
    """Cached normalised log-mels (float16) and character ids of a list of records."""

    def __init__(self, records: list[SpeechRecord], model: SpeechRecognizer, max_seconds: float,
                 report: SkipReport, progress: bool = True, desc: str = "log-mel"):
        self.records, self.mels, self.tokens = [], [], []
        frames = max_seconds * model.mel_cfg.sample_rate / model.mel_cfg.hop_length
        for r in tqdm(records, desc=desc, disable=not progress, unit="utt"):
            ids = model.vocab.encode(r.transcript)
            if not ids:
                report.skip("no character of the alphabet in the transcript", r.id)
                continue
            mel = model.features(load_speech(r))
            if mel.shape[-1] > frames:
                report.skip(f"longer than data.max_seconds={max_seconds}", r.id)
                continue
            self.records.append(r)
            self.mels.append(mel.half())
            self.tokens.append(torch.tensor(ids))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mels[i], self.tokens[i]

    @staticmethod
    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        mel, mel_lengths = pad_mels([m for m, _ in items])
        tokens = torch.nn.utils.rnn.pad_sequence([t for _, t in items], batch_first=True)
        return {"mel": mel, "mel_lengths": mel_lengths, "tokens": tokens,
                "token_lengths": torch.tensor([len(t) for _, t in items])}


class LengthOrder:
    """An epoch order for the Trainer's sampler: shuffled, then sorted by length within runs of `bucket` batches,
    batches shuffled again; little padding, still random.

    Example:
        >>> order = LengthOrder([5, 1, 4, 2, 3, 6], batch_size=2, bucket=3)(torch.Generator().manual_seed(0))
        >>> sorted(order), sorted(tuple(sorted([5, 1, 4, 2, 3, 6][i] for i in order[k:k + 2])) for k in (0, 2, 4))
        ([0, 1, 2, 3, 4, 5], [(1, 2), (3, 4), (5, 6)])
    """

    def __init__(self, lengths: list[int], batch_size: int, bucket: int):
        self.lengths, self.batch_size, self.run = lengths, batch_size, max(bucket, 1) * batch_size

    def __call__(self, generator: torch.Generator) -> list[int]:
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        runs = [sorted(order[i:i + self.run], key=self.lengths.__getitem__) for i in range(0, len(order), self.run)]
        flat = [i for run in runs for i in run]
        batches = [flat[i:i + self.batch_size] for i in range(0, len(flat), self.batch_size)]
        return [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]


def transcribe_set(model: SpeechRecognizer, data: Utterances, beam_size: int, use_lexicon: bool = True,
                   batch_size: int = 64) -> list[str]:
    order = sorted(range(len(data)), key=lambda i: data.mels[i].shape[-1])  # similar lengths share a batch
    out: dict[int, str] = {}
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        for j, text in zip(idx, model.decode_mels([data.mels[j] for j in idx], beam_size, use_lexicon), strict=True):
            out[j] = text
    return [out[i] for i in range(len(data))]


def error_rates(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Corpus WER and CER of `hyps` against `refs`, and how many utterances.

    Example:
        >>> error_rates(["a red circle", "what shape"], ["a red square", "what shape"])["wer"]
        0.2
    """
    return {"wer": word_error_rate(hyps, refs), "cer": character_error_rate(hyps, refs), "utterances": len(refs)}


def score_test(model: SpeechRecognizer, data: Utterances, rows: dict[str, dict]) -> dict[str, Any]:
    """WER/CER on `data`, greedy and beam + lexicon, overall and by SNR (clean = no noise added) when known."""
    refs = [r.transcript for r in data.records]
    out: dict[str, Any] = {}
    for name, beam in (("greedy", 1), ("beam", model.cfg.beam_size)):
        started = time.time()
        hyps = transcribe_set(model, data, beam)
        out[name] = {**error_rates(hyps, refs), "seconds": round(time.time() - started, 1)}
        snrs = [rows.get(r.id, {}).get("snr_db", "unknown") for r in data.records]
        if any(s != "unknown" for s in snrs):
            groups: dict[str, list[int]] = defaultdict(list)
            for i, s in enumerate(snrs):
                groups["clean" if s is None else "noisy"].append(i)
                if s is not None:
                    groups[f"snr_{s:g}dB"].append(i)
            out[name]["by_snr"] = {k: error_rates([hyps[i] for i in v], [refs[i] for i in v])
                                   for k, v in sorted(groups.items())}
        out[name]["examples"] = [{"id": r.id, "reference": r.transcript, "heard": h}
                                 for r, h in list(zip(data.records, hyps, strict=True))[:5]]
    return out


def _splits(cfg: ASRExperimentConfig, folder: Path) -> dict[str, list[SpeechRecord]]:
    records = read_speech(folder)
    splits = {s: [r for r in records if r.split == s] for s in (cfg.data.train_split, cfg.data.val_split,
                                                                 cfg.data.test_split)}
    for name, recs in splits.items():
        if not recs:
            raise DataError(f"{folder}: no utterance in split {name!r}; give records a 'split' or set data.*_split")
    return splits


def train_asr(cfg: ASRExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train a speech recognizer; score the best one on the test split; writes `{out_dir}/metrics.json`."""
    cfg = copy.deepcopy(cfg)
    folder = speech_folder(cfg.data, progress)
    splits = _splits(cfg, folder)
    d, report = cfg.data, SkipReport(source=str(folder))
    torch.manual_seed(cfg.seed)
    model = SpeechRecognizer(cfg.model, sorted(Lexicon.build(r.transcript for r in splits[d.train_split]).words))
    sets = {s: Utterances(recs, model, d.max_seconds, report, progress, f"log-mel {s}") for s, recs in splits.items()}
    train_set, val_set = sets[d.train_split], sets[d.val_split]

    def evaluate(m: SpeechRecognizer) -> dict[str, float]:
        rates = error_rates(transcribe_set(m, val_set, beam_size=1), [r.transcript for r in val_set.records])
        return {"cer": rates["cer"], "wer": rates["wer"], "char_accuracy": 1.0 - rates["cer"]}

    order = LengthOrder([m.shape[-1] for m in train_set.mels], cfg.train.batch_size, d.bucket)
    trainer = Trainer(model, train_set, cfg.train, collate=Utterances.collate, save_model=model.write_files,
                      seed=cfg.seed, evaluate=evaluate, run_config=dataclasses.asdict(cfg), progress=progress,
                      epoch_order=order)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_items=len(train_set), skipped_records=report.count, lexicon_words=len(model.lexicon.words),
                   trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    if stop_at is not None and summary.get("stopped_at"):
        return summary
    best = SpeechRecognizer.from_pretrained(Path(cfg.train.out_dir) / "model")
    summary["test"] = score_test(best, sets[d.test_split], manifest_rows(folder))
    summary["ood_threshold"] = save_model_stats(best, Path(cfg.train.out_dir) / "model",  # a recording unlike these
                                                [r.audio for r in splits[d.train_split]],
                                                [r.audio for r in splits[d.val_split]])
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


train_asr.config_cls = ASRExperimentConfig  # type: ignore[attr-defined]
