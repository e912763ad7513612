"""Clip datasets: Shapes World video annotations, every clip decoded once (frames -> features, sound
-> log-mel) into a safetensors cache, and torch Datasets for video captioning and video QA.

Example:
    >>> import tempfile
    >>> from polymodal.data.shapes_video import write_shapes_video
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = write_shapes_video(f"{tmp.name}/shapes_video", n=3, size=32, progress=False)
    >>> clips = read_annotations(folder, split="train")
    >>> bank = ClipBank.build(clips, folder, frames=4, size=32, mel=MelConfig(), encode=None, progress=False)
    >>> bank.tensors["frames"].shape, bank.tensors["mel"].shape  # (clips, T, 3, S, S), (clips, mels, steps)
    (torch.Size([1, 4, 3, 32, 32]), torch.Size([1, 40, 251]))
    >>> tmp.cleanup()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset
from tqdm import tqdm

from ..checkpoint import save_tensors
from ..errors import DataError
from ..text.tokenizer import Tokenizer
from .audio import MelConfig, fit_length, load_audio, log_mel
from .images import normalize
from .qa import answer_targets
from .records import resolve_image_path
from .video import read_frames


def read_annotations(folder: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The clips of a Shapes World video folder (`annotations.json`), optionally of one split."""
    path = Path(folder) / "annotations.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; write a dataset with `polymodal data shapes-video --out {folder}`")
    try:
        clips = json.loads(path.read_text(encoding="utf-8"))["clips"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a Shapes World video annotation file ({err}); write it again") from None
    return [c for c in clips if split is None or c["split"] == split]


def clip_path(folder: str | Path, clip: dict[str, Any]) -> Path:
    """The clip's video file, which must lie inside the dataset folder (annotations may come from anyone)."""
    path = resolve_image_path(folder, str(clip["video"]))
    if path is None:
        raise DataError(f"{Path(folder) / 'annotations.json'}: clip {clip.get('id')!r} points outside the dataset "
                        f"folder ({clip['video']!r}); fix the annotation file")
    return Path(path)


class ClipBank:
    """Every clip's model inputs, decoded once: "frames" uint8 (or "frame_features" from a frozen encoder),
    "mel" and the sampled frame "times", stacked over clips and cached on disk by content key."""

    def __init__(self, ids: list[str], tensors: dict[str, torch.Tensor]):
        self.ids, self.tensors = ids, tensors
        self.row = {cid: i for i, cid in enumerate(ids)}

    @classmethod
    def build(cls, clips: list[dict], folder: str | Path, frames: int, size: int, mel: MelConfig,
              encode: Callable[[torch.Tensor], torch.Tensor] | None, cache_dir: Path | None = None,
              cache_key: str = "", progress: bool = True, video: bool = True) -> ClipBank:
        """Decode `clips` (frames from their mp4, sound from its audio track); `encode` maps normalised frames
        (B, T, 3, S, S) to features (B, T, R, C) and replaces the frames (a frozen encoder). With `video`
        False no frame is decoded ("times" are then the centres of `frames` equal slices)."""
        ids = [c["id"] for c in clips]
        key = hashlib.sha256(json.dumps([str(Path(folder).resolve()), ids, frames, size, dataclasses.asdict(mel),
                                         cache_key, encode is not None, video],
                                        sort_keys=True).encode()).hexdigest()[:16]
        file = cache_dir / f"clips-{key}.safetensors" if cache_dir else None
        if file is not None and file.is_file():
            return cls(ids, load_file(str(file)))
        parts: dict[str, list[torch.Tensor]] = {"mel": [], "times": [], "frames": []}
        feats: list[torch.Tensor] = []
        samples = int(round(frames_duration(clips) * mel.sample_rate))
        for i, clip in enumerate(tqdm(clips, desc="decode clips", disable=not progress)):
            path = clip_path(folder, clip)
            parts["mel"].append(log_mel(fit_length(load_audio(path, mel.sample_rate), samples), mel).half())
            if not video:
                parts["times"].append((torch.arange(frames) + 0.5) * samples / mel.sample_rate / frames)
                continue
            sampled = read_frames(path, frames, size)
            parts["frames"].append(sampled.frames)
            parts["times"].append(torch.tensor(sampled.times))
            if encode is not None and (len(parts["frames"]) == 32 or i == len(clips) - 1):
                with torch.no_grad():
                    feats.append(encode(normalize(torch.stack(parts["frames"]).float() / 255.0)).half())
                parts["frames"] = []
        tensors = {k: torch.stack(v) for k, v in parts.items() if v}
        if encode is not None:
            tensors["frame_features"] = torch.cat(feats)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(file, tensors)
        return cls(ids, tensors)

    def inputs(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Model inputs for some clips: "frames" (normalised) or "frame_features", and "mel"."""
        out = {"mel": self.tensors["mel"][rows].float()}
        if "frame_features" in self.tensors:
            out["frame_features"] = self.tensors["frame_features"][rows].float()
        elif "frames" in self.tensors:
            out["frames"] = normalize(self.tensors["frames"][rows].float() / 255.0)
        return out


def frames_duration(clips: list[dict]) -> float:
    """Clip length in seconds of Shapes World video (all clips are equally long)."""
    return 4.0 if not clips else float(clips[0].get("duration", 4.0))


def event_targets(times: torch.Tensor, events: list[dict]) -> torch.Tensor:
    """(T,) with 1 at the sampled frame nearest to each event's start time."""
    out = torch.zeros(len(times))
    for e in events:
        out[int((times - float(e["time"])).abs().argmin())] = 1.0
    return out


def event_fields(clips: list[dict]) -> dict[str, list[str]]:
    """Every text field the clips' events annotate -> its values, "" (none) first; the first field (the
    event's kind) also says whether anything starts at a step.

    Example:
        >>> event_fields([{"events": [{"kind": "enters", "colour": "red", "side": "left", "time": 0.5},
        ...                           {"kind": "appears", "colour": "blue", "side": "", "time": 1.0}]}])
        {'kind': ['', 'appears', 'enters'], 'colour': ['', 'blue', 'red'], 'side': ['', 'left']}
    """
    values: dict[str, set[str]] = {}
    for clip in clips:
        for e in clip.get("events", []):
            for name, v in e.items():
                if isinstance(v, str):
                    values.setdefault(name, set()).add(v)
    return {name: ["", *sorted(v - {""})] for name, v in values.items()}


def event_labels(times: torch.Tensor, events: list[dict], fields: dict[str, list[str]]) -> torch.Tensor:
    """(T, fields) value indices: at the sampled frame nearest each event's start, its value of every field
    (-100 for a value the fields do not know); elsewhere the first field is "" (nothing starts) and the
    rest -100 (nothing to say).

    Example:
        >>> fields = {"kind": ["", "enters"], "colour": ["", "red"]}
        >>> event_labels(torch.tensor([0.0, 0.5, 1.0]), [{"kind": "enters", "colour": "red", "time": 0.6}], fields)
        tensor([[   0, -100],
                [   1,    1],
                [   0, -100]])
    """
    out = torch.full((len(times), len(fields)), -100, dtype=torch.long)
    if fields:
        out[:, 0] = 0
    for e in events:
        step = int((times - float(e["time"])).abs().argmin())
        for i, (name, vocab) in enumerate(fields.items()):
            value = str(e.get(name, ""))
            out[step, i] = vocab.index(value) if value in vocab else -100
    return out


class ClipCaptionDataset(Dataset):
    """Items (clip row, mode, caption ids, event targets, event labels): each clip twice, its event caption
    and its summary. `fields` (see `event_fields`) adds per-step event labels."""

    def __init__(self, clips: list[dict], bank: ClipBank, tokenizer: Tokenizer, max_len: int,
                 modes: tuple[str, ...] = ("events", "summary"), fields: dict[str, list[str]] | None = None):
        self.bank, self.items, self.fields = bank, [], fields or {}
        for clip in clips:
            row = bank.row[clip["id"]]
            targets = event_targets(bank.tensors["times"][row], clip["events"])
            labels = event_labels(bank.tensors["times"][row], clip["events"], self.fields)
            for m, mode in enumerate(modes):
                text = clip["caption"] if mode == "events" else clip["summary"]
                ids = [tokenizer.bos_id, *tokenizer.encode(text, max_len - 2), tokenizer.eos_id]
                self.items.append((row, m, torch.tensor(ids), targets, labels))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]

    def collate(self, items: list[tuple]) -> dict[str, torch.Tensor]:
        rows = [it[0] for it in items]
        tokens = torch.zeros(len(items), max(len(it[2]) for it in items), dtype=torch.long)
        for r, it in enumerate(items):
            tokens[r, : len(it[2])] = it[2]
        out = {**self.bank.inputs(rows), "mode": torch.tensor([it[1] for it in items]), "tokens": tokens,
               "event_targets": torch.stack([it[3] for it in items])}
        if self.fields:
            out["event_labels"] = torch.stack([it[4] for it in items])
        return out


class ClipQADataset(Dataset):
    """Items (clip row, question ids, soft answer targets) for every question of every clip."""

    def __init__(self, clips: list[dict], bank: ClipBank, tokenizer: Tokenizer, answers: list[str], max_len: int):
        self.bank, self.items, self.questions = bank, [], []
        for clip in clips:
            for q in clip["questions"]:
                ids = tokenizer.encode(q["question"], max_len) or [tokenizer.unk_id]
                self.items.append((bank.row[clip["id"]], torch.tensor(ids), answer_targets(answers, [q["answer"]])))
                self.questions.append(q)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]

    def collate(self, items: list[tuple]) -> dict[str, torch.Tensor]:
        tokens = torch.zeros(len(items), max(len(it[1]) for it in items), dtype=torch.long)
        for r, it in enumerate(items):
            tokens[r, : len(it[1])] = it[1]
        return {**self.bank.inputs([it[0] for it in items]), "tokens": tokens,
                "targets": torch.stack([it[2] for it in items])}
