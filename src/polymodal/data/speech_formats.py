"""Readers for speech data from outside: a JSONL manifest, or the LibriSpeech folder layout.

Both give `list[SpeechRecord]`. A JSONL manifest has one object per line: {"audio": path relative
to the manifest's folder, "text" or "transcript", optional "split" and "id"} (spoken Shapes World's
manifest.jsonl is one). LibriSpeech keeps `SPEAKER-CHAPTER.trans.txt` files beside the flac files,
each line `SPEAKER-CHAPTER-UTT TRANSCRIPT`; the split comes from the top folder's name
(train-clean-100 -> train, dev-clean -> val, test-other -> test). Bad records (broken JSON, no audio
or text, a path that leaves the folder) are skipped and counted in a `SkipReport`; an audio file that
is missing is a `DataError` naming it, and `load_speech` names a file that cannot be decoded.

Example:
    >>> import tempfile
    >>> from polymodal.data.audio import tone, write_wav
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = write_wav(f"{tmp.name}/a.wav", tone(440, 0.5), 16000)
    >>> _ = Path(tmp.name, "m.jsonl").write_text('{"audio": "a.wav", "text": "a red circle"}\\nnot json\\n')
    >>> report = SkipReport()
    >>> [(r.id, r.transcript) for r in read_speech(f"{tmp.name}/m.jsonl", report)], report.count
    ([('a', 'a red circle')], 1)
    >>> load_speech(read_speech(f"{tmp.name}/m.jsonl")[0]).shape
    torch.Size([8000])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .annotation_io import read_text, split_lines
from .audio import load_audio
from .records import ALLOW_OUTSIDE_HINT, ESCAPES_ROOT, SkipReport, resolve_image_path

log = logging.getLogger(__name__)
_SPLIT_PREFIXES = {"train": "train", "dev": "val", "val": "val", "test": "test"}


@dataclass
class SpeechRecord:
    """One utterance: its audio file and what is said in it.

    Example:
        >>> SpeechRecord(id="1-2-3", audio="/data/1-2-3.flac", transcript="HELLO", split="test").split
        'test'
    """

    id: str
    audio: str                   # path of the audio file (any format PyAV decodes)
    transcript: str
    split: str | None = None


def load_speech(record: SpeechRecord, sample_rate: int = 16000) -> torch.Tensor:
    """The utterance's mono waveform (S,) at `sample_rate`; a DataError names a file that will not decode."""
    return load_audio(record.audio, sample_rate)


def _finish(path: Path, records: list[SpeechRecord], report: SkipReport, own: bool) -> list[SpeechRecord]:
    if not records:
        hint = f"; {ALLOW_OUTSIDE_HINT}" if report.reasons.get(ESCAPES_ROOT) else ""
        raise DataError(f"{path}: no usable speech records{hint}; pass a JSONL manifest ({{\"audio\", \"text\"}} "
                        f"per line) or a LibriSpeech folder (*.trans.txt beside the audio) ({report.summary()})")
    if own and report.count:
        log.warning(report.summary())
    return records


def _audio_path(root: Path, name: str, where: str, report: SkipReport, allow_outside_root: bool) -> str | None:
    audio = resolve_image_path(root, name, allow_outside_root)  # the same rule as images: stay inside the folder
    if audio is None:
        report.skip(ESCAPES_ROOT.replace("image", "audio"), f"{where} ({name!r})")
    elif not os.path.isfile(audio):
        raise DataError(f"{audio}: audio file not found ({where}); check the path or remove the record")
    return audio


def read_manifest(path: str | os.PathLike, report: SkipReport | None = None,
                  allow_outside_root: bool = False) -> list[SpeechRecord]:
    """Records of a JSONL speech manifest (see the module docstring); ids default to the audio file's stem."""
    path, own = Path(path), report is None
    report = report if report is not None else SkipReport()
    report.source = report.source or str(path)
    records = []
    for n, line in enumerate(split_lines(read_text(path)), start=1):
        where = f"{path.name} line {n}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            report.skip("line is not JSON", where)
            continue
        if not isinstance(row, dict):
            report.skip("line is not a JSON object", where)
            continue
        text, name = row.get("text", row.get("transcript")), row.get("audio")
        if not isinstance(name, str) or not name.strip():
            report.skip("no 'audio' path", where)
        elif not isinstance(text, str) or not text.strip():
            report.skip("no 'text' or 'transcript'", where)
        elif (audio := _audio_path(path.parent, name.strip(), where, report, allow_outside_root)) is not None:
            split = row.get("split")
            records.append(SpeechRecord(str(row.get("id") or Path(name).stem), audio, text.strip(),
                                        str(split) if split not in (None, "") else None))
    return _finish(path, records, report, own)


def _librispeech_split(parts: tuple[str, ...]) -> str | None:
    for part in parts:
        for prefix, split in _SPLIT_PREFIXES.items():
            if part.lower().startswith(prefix):
                return split
    return None


def read_librispeech(root: str | os.PathLike, report: SkipReport | None = None) -> list[SpeechRecord]:
    """Records of a LibriSpeech-style folder: every `*.trans.txt` under `root`, audio beside it (.flac or .wav)."""
    root, own = Path(root), report is None
    report = report if report is not None else SkipReport()
    report.source = report.source or str(root)
    records = []
    for trans in sorted(root.rglob("*.trans.txt")):
        split = _librispeech_split(trans.relative_to(root).parts[:-1])
        for n, line in enumerate(split_lines(read_text(trans)), start=1):
            where = f"{trans.name} line {n}"
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not text.strip():
                report.skip("no transcript after the utterance id", where)
                continue
            found = [trans.parent / f"{utt}{ext}" for ext in (".flac", ".wav") if (trans.parent / f"{utt}{ext}").is_file()]
            if not found:
                raise DataError(f"{trans.parent / utt}.flac: audio file not found ({where}); check the folder "
                                f"or remove the line")
            records.append(SpeechRecord(utt, str(found[0]), text.strip(), split))
    return _finish(root, records, report, own)


def read_speech(path: str | os.PathLike, report: SkipReport | None = None,
                allow_outside_root: bool = False) -> list[SpeechRecord]:
    """Read a JSONL manifest, a folder holding `manifest.jsonl`, or a LibriSpeech-style folder.

    Raises:
        DataError: nothing readable there, no usable record, or a record's audio file is missing.
    """
    path = Path(path)
    if path.is_dir() and (path / "manifest.jsonl").is_file():
        path = path / "manifest.jsonl"
    if path.is_file():
        return read_manifest(path, report, allow_outside_root)
    if path.is_dir() and next(path.rglob("*.trans.txt"), None) is not None:
        return read_librispeech(path, report)
    what = "folder holds no manifest.jsonl and no LibriSpeech *.trans.txt files" if path.is_dir() else "not found"
    raise DataError(f"{path}: {what}; pass a JSONL speech manifest or a LibriSpeech folder")
