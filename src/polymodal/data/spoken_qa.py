"""Spoken VQA: Shapes World questions read aloud by espeak-ng voices, joined to their answers and images.

A sample of each split's questions (qa.jsonl of a Shapes World folder) is spoken with the voicing of
`speech.sample_voicing` (voice, speed, pitch, noise, reverb): train and val by `TRAIN_VOICES`, test by the
held-out `TEST_VOICES`. The folder holds `audio/{split}/*.wav` (16 kHz mono) and `manifest.jsonl`, one line
per question: {"id", "split", "audio", "image" (relative to the Shapes World folder, named in
captions.json's "info"), "question", "answers", "type", "voice", "speed", "pitch", "snr_db" (null: clean),
"noise", "reverb", "seed", "duration"}. Written atomically; the same call again returns at once.

Example:
    >>> import tempfile
    >>> from polymodal.data.shapes import write_shapes_world
    >>> tmp = tempfile.TemporaryDirectory()
    >>> world = write_shapes_world(f"{tmp.name}/world", n=20, image_size=32, progress=False)
    >>> folder = write_spoken_qa(f"{tmp.name}/spoken", world, {"train": 4, "test": 2},
    ...                          progress=False)  # doctest: +SKIP
    >>> [r.split for r in read_spoken_qa(folder)]  # doctest: +SKIP
    ['train', 'train', 'train', 'train', 'test', 'test']
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from .audio import write_wav
from .folders import write_dataset_folder
from .qa import QARecord, read_qa
from .speech import (
    INSTALL_HINT,
    SAMPLE_RATE,
    TEST_VOICES,
    TRAIN_VOICES,
    Voicing,
    espeak_available,
    sample_voicing,
    synthesize,
)

VERSION = 1
DEFAULT_SIZES = {"train": 8000, "val": 500, "test": 1000}


@dataclass
class SpokenQARecord(QARecord):
    """A QARecord whose question is also spoken: the audio file (absolute path) and how it was voiced.

    Example:
        >>> r = SpokenQARecord(id="q1", image="/d/a.png", question="what colour is the star?", answers=["red"],
        ...                    audio="/d/q1.wav", snr_db=10.0)
        >>> r.clean
        False
    """

    audio: str = ""
    voice: str = ""
    snr_db: float | None = None
    reverb: bool = False
    duration: float = 0.0

    @property
    def clean(self) -> bool:
        """No noise added (reverb may still be there)."""
        return self.snr_db is None


def _entries(world: Path, sizes: dict[str, int], seed: int) -> list[dict]:
    """The questions to speak: a seeded sample of each split's qa.jsonl records, with their voicing."""
    entries = []
    for split, k in sizes.items():
        records = read_qa(world / "qa.jsonl", split=split)
        if k > len(records):
            raise DataError(f"{world}/qa.jsonl: {k} {split} questions asked for, only {len(records)} there; "
                            f"ask for fewer or use a larger Shapes World")
        rng = random.Random(f"spoken-qa/v{VERSION}/{seed}/{split}")
        picked = sorted(rng.sample(range(len(records)), k))
        for i in picked:
            r = records[i]
            qid = f"{split}_q{i:06d}"
            voicing = sample_voicing(random.Random(f"spoken-qa/v{VERSION}/{seed}/{qid}"),
                                     TEST_VOICES if split == "test" else TRAIN_VOICES)
            entries.append({"id": qid, "split": split, "audio": f"audio/{split}/{qid}.wav",
                            "image": str(Path(r.image).relative_to(world.resolve())), "question": r.question,
                            "answers": r.answers, "type": r.type, **asdict(voicing)})
    return entries


def _speak(root: Path, entry: dict) -> dict:
    fields = {k: entry[k] for k in ("voice", "speed", "pitch", "snr_db", "noise", "reverb", "seed")}
    wave = synthesize(entry["question"].rstrip("?"), Voicing(**fields), workdir=root)
    write_wav(root / entry["audio"], wave, SAMPLE_RATE)
    return {**entry, "duration": round(len(wave) / SAMPLE_RATE, 3)}


def write_spoken_qa(out_dir: str | os.PathLike, world: str | os.PathLike, sizes: dict[str, int] | None = None,
                    seed: int = 0, progress: bool = True, workers: int = 4) -> Path:
    """Speak `sizes[split]` questions of each split of the Shapes World folder `world`; see the module docstring.

    Raises:
        DataError: espeak-ng is missing, or a split has fewer questions than asked for.
        ConfigError: `out_dir` holds something else.
    """
    world = Path(world).resolve()
    sizes = dict(sizes or DEFAULT_SIZES)
    if not espeak_available():
        raise DataError(f"{out_dir}: cannot synthesize speech: espeak-ng not found on PATH; {INSTALL_HINT}")
    info = {"description": "spoken Shapes World questions", "generator": "polymodal.data.spoken_qa",
            "version": VERSION, "world": str(world), "sizes": sizes, "seed": int(seed), "sample_rate": SAMPLE_RATE,
            "test_voices": list(TEST_VOICES)}

    def write(root: Path) -> None:
        entries = _entries(world, sizes, seed)
        for split in sizes:
            (root / "audio" / split).mkdir(parents=True)
        # espeak-ng runs as a subprocess: threads overlap the processes, each job has its own temporary files
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            done = list(tqdm(pool.map(lambda e: _speak(root, e), entries), total=len(entries),
                             disable=not progress, desc="spoken VQA questions", unit="utt"))
        with open(root / "manifest.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e) + "\n" for e in done)
        with open(root / "captions.json", "w", encoding="utf-8") as f:  # last: the completion mark
            json.dump({"info": info, "manifest": "manifest.jsonl"}, f)

    return write_dataset_folder(out_dir, info, write, "spoken VQA questions", files=("captions.json", "manifest.jsonl"))


def spoken_qa_folder(world: str | os.PathLike, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Where the spoken questions of the Shapes World folder `world` are cached (written by `write_spoken_qa`).

    Example:
        >>> spoken_qa_folder("/c/shapes-n5000-seed0-px128", {"train": 10, "test": 5}).name
        'spoken-qa-shapes-n5000-seed0-px128-seed0-train10-test5'
    """
    from .datasets import cache_root

    sizes = dict(sizes or DEFAULT_SIZES)
    counts = "-".join(f"{s}{k}" for s, k in sizes.items())
    return cache_root() / f"spoken-qa-{Path(world).name}-seed{seed}-{counts}"


def read_spoken_qa(folder: str | os.PathLike, split: str | None = None) -> list[SpokenQARecord]:
    """The records of a folder written by `write_spoken_qa` (one split, or all), with absolute paths.

    Raises:
        DataError: the folder is not a complete spoken VQA folder.
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / "captions.json").read_text(encoding="utf-8"))["info"]
        lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{folder}: not a spoken VQA folder ({type(err).__name__}); write one with "
                        f"polymodal.data.spoken_qa.write_spoken_qa") from None
    world = Path(info["world"])
    out = []
    for line in lines:
        e = json.loads(line)
        if split is not None and e["split"] != split:
            continue
        out.append(SpokenQARecord(id=e["id"], image=str(world / e["image"]), question=e["question"],
                                  answers=list(e["answers"]), type=e.get("type"), split=e["split"],
                                  audio=str(folder / e["audio"]), voice=e["voice"], snr_db=e.get("snr_db"),
                                  reverb=bool(e.get("reverb")), duration=float(e.get("duration", 0.0))))
    return out
