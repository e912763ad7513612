"""Spoken Shapes World: the questions and captions of Shapes World read aloud by espeak-ng voices.

Each utterance is synthesized by an `espeak-ng` subprocess (voice, speed in words per minute, pitch
0-99), resampled to 16 kHz mono with `audio.load_audio`, optionally convolved with a short synthetic
room (`reverb`: exponentially decaying noise) and mixed with white or pink noise at a chosen SNR
(`add_noise`; signal power is the mean square of the whole clean utterance). Everything random is
drawn from a seeded `random.Random`, so the same seed writes the same files.

A voice is an accent and a variant ("en-gb-scotland+f2"). Whole voices are held out: the test split
speaks only `TEST_VOICES`, train and val only `TRAIN_VOICES`; every accent and every variant occurs on
both sides, only their combinations are new, so test WER measures generalization to unseen speakers.

Example:
    >>> len(VOICES), len(TEST_VOICES), set(TEST_VOICES) & set(TRAIN_VOICES)
    (64, 16, set())
    >>> wave = add_noise(np.ones(16000, np.float32), snr_db=10.0, kind="white", rng=np.random.default_rng(0))
    >>> round(float(10 * np.log10(1.0 / np.mean((wave - 1.0) ** 2))), 1)
    10.0
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from .audio import load_audio, write_wav
from .folders import write_dataset_folder

SAMPLE_RATE = 16000
VERSION = 1
# `espeak-ng --voices=en`: the built-in (non-mbrola) English accents, and voice variants (espeak-ng-data/voices/!v)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
VOICES = tuple(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)
# one voice in four, on a diagonal: every accent and every variant keeps voices on both sides
TEST_VOICES = tuple(f"{a}+{v}" for i, a in enumerate(ACCENTS) for j, v in enumerate(VARIANTS) if (i + j) % 4 == 0)
TRAIN_VOICES = tuple(v for v in VOICES if v not in TEST_VOICES)
SPEEDS = (130, 150, 170, 190)          # words per minute (espeak-ng's default is 175)
PITCHES = (30, 40, 50, 60, 70)         # 0-99, default 50
SNRS = (None, None, 30.0, 20.0, 10.0, 5.0)  # None: clean (a third of the utterances)
NOISES = ("white", "pink")
REVERB_PROB = 0.25
INSTALL_HINT = "install it (`sudo apt-get install espeak-ng`, or `make speech`)"


@dataclass(frozen=True)
class Voicing:
    """How one utterance is spoken: the voice, its speed and pitch, and the noise and reverb added.

    Example:
        >>> Voicing("en-gb+f2", speed=150, pitch=60, snr_db=10.0, noise="pink").voice
        'en-gb+f2'
    """

    voice: str = "en-us+m1"
    speed: int = 160            # words per minute
    pitch: int = 50             # 0-99
    snr_db: float | None = None  # None: no noise
    noise: str = "white"        # "white" or "pink"
    reverb: bool = False
    seed: int = 0               # the noise and room draws


def espeak_available() -> bool:
    """True when the `espeak-ng` program is on PATH."""
    return shutil.which("espeak-ng") is not None


def espeak(text: str, path: str | os.PathLike, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Path:
    """Speak `text` into the WAV file `path` (espeak-ng's own rate, 22.05 kHz) with one espeak-ng process.

    Raises:
        DataError: espeak-ng is missing or fails (e.g. an unknown voice).
    """
    if not espeak_available():
        raise DataError(f"espeak-ng not found on PATH; {INSTALL_HINT}")
    # the text goes in on stdin: a text that starts with "-" is never read as an option
    cmd = ["espeak-ng", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", str(path), "--stdin"]
    done = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60)
    if done.returncode != 0 or not Path(path).is_file():
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DataError(f"espeak-ng failed for voice {voice!r} ({why[0] if why else f'exit {done.returncode}'}); "
                        f"list the voices with `espeak-ng --voices=en`")
    return Path(path)


def espeak_wav(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> bytes:
    """`text` spoken by espeak-ng as the bytes of a WAV file (16-bit mono, 22.05 kHz), e.g. a spoken reply.

    Raises:
        DataError: espeak-ng is missing or fails.

    Example:
        >>> espeak_wav("a red circle")[:4]  # doctest: +SKIP
        b'RIFF'
    """
    with tempfile.TemporaryDirectory() as tmp:
        return espeak(text, Path(tmp) / "reply.wav", voice, speed, pitch).read_bytes()


def coloured_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of unit-power "white" or "pink" (power falling as 1/f) noise.

    Example:
        >>> x = coloured_noise(16000, "pink", np.random.default_rng(0))
        >>> x.shape, round(float(np.mean(x ** 2)), 3)
        ((16000,), 1.0)
    """
    if kind not in NOISES:
        raise DataError(f"unknown noise {kind!r}; use one of {NOISES}")
    x = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(x)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0  # keep the DC bin finite
        x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return (x / np.sqrt(np.mean(x**2) + 1e-12)).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`wave` plus noise whose power is `snr_db` below the wave's mean power."""
    power = float(np.mean(np.asarray(wave, np.float64) ** 2))
    return (wave + coloured_noise(len(wave), kind, rng) * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def reverb(wave: np.ndarray, rng: np.random.Generator, rt60: float | None = None,
           sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Convolve with a synthetic room: a direct path, then noise decaying by 60 dB over `rt60` seconds.

    Example:
        >>> click = np.zeros(8000, np.float32); click[0] = 1.0
        >>> room = reverb(click, np.random.default_rng(0), rt60=0.3)
        >>> room.shape, float(room[0]) > abs(float(room[4000]))
        ((8000,), True)
    """
    rt60 = rt60 if rt60 is not None else float(rng.uniform(0.2, 0.6))
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    ir = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60) * 0.1  # -60 dB at rt60
    ir[0] = 1.0
    size = len(wave) + len(ir) - 1
    wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(ir, size), size)[:len(wave)]
    return (wet * np.sqrt(np.mean(wave**2) / (np.mean(wet**2) + 1e-12))).astype(np.float32)  # same power


def synthesize(text: str, voicing: Voicing, workdir: str | os.PathLike | None = None) -> np.ndarray:
    """The waveform (S,) at 16 kHz of `text` spoken as `voicing` says, peak at most 0.9.

    `workdir` holds espeak-ng's temporary file (default: a fresh temporary folder).

    Example:
        >>> wave = synthesize("what colour is the circle", Voicing("en-gb+f2"))  # doctest: +SKIP
        >>> 0.5 < len(wave) / 16000 < 3.0  # doctest: +SKIP
        True
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        raw = espeak(text, Path(tmp) / "raw.wav", voicing.voice, voicing.speed, voicing.pitch)
        wave = load_audio(raw, SAMPLE_RATE).numpy()
    rng = np.random.default_rng(voicing.seed)
    if voicing.reverb:
        wave = reverb(wave, rng)
    if voicing.snr_db is not None:
        wave = add_noise(wave, voicing.snr_db, voicing.noise, rng)
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    return wave * (0.9 / peak) if peak > 0.9 else wave


def sample_voicing(rng: random.Random, voices: tuple[str, ...]) -> Voicing:
    """A random voice from `voices`, speed, pitch, SNR (or clean), noise colour and reverb.

    Example:
        >>> sample_voicing(random.Random(0), TEST_VOICES).voice in TEST_VOICES
        True
    """
    return Voicing(rng.choice(voices), rng.choice(SPEEDS), rng.choice(PITCHES), rng.choice(SNRS),
                   rng.choice(NOISES), rng.random() < REVERB_PROB, rng.randrange(2**31))


# ----------------------------------------------------------------------------- the dataset on disk
def split_sizes(n: int) -> dict[str, int]:
    """Utterances per split: val = test = max(n // 10, 1), train the rest.

    Example:
        >>> split_sizes(300)
        {'train': 240, 'val': 30, 'test': 30}
    """
    tenth = max(n // 10, 1)
    return {"train": n - 2 * tenth, "val": tenth, "test": tenth}


def _utterance(world, seed: int, split: str, i: int) -> dict:
    """The text of utterance `i` of `split` (a question or a caption of Shapes World image `i`) and its voicing."""
    rng = random.Random(f"shapes-speech/v{VERSION}/{seed}/{split}/{i}")
    scene_id = f"{split}_{i:06d}"
    entry = {"audio": f"audio/{split}/{scene_id}.wav", "split": split,
             "image": f"world/images/{split}/{scene_id}.png", "question_id": None}
    if rng.random() < 0.5:
        k = rng.randrange(len(qas := world.questions(split, i)))
        entry.update(transcript=qas[k]["question"].rstrip("?"), source="question", question_id=f"{scene_id}_q{k}")
    else:
        entry.update(transcript=rng.choice(world.captions(split, i)), source="caption")
    voicing = sample_voicing(rng, TEST_VOICES if split == "test" else TRAIN_VOICES)
    return {**entry, **asdict(voicing)}


def _speak(root: Path, entry: dict) -> dict:
    fields = {k: entry[k] for k in ("voice", "speed", "pitch", "snr_db", "noise", "reverb", "seed")}
    wave = synthesize(entry["transcript"], Voicing(**fields), workdir=root)
    write_wav(root / entry["audio"], wave, SAMPLE_RATE)
    return {**entry, "duration": round(len(wave) / SAMPLE_RATE, 3)}


def _write(root: Path, info: dict, progress: bool) -> None:
    from .shapes import ShapesWorld, write_shapes_world

    n, seed = info["n"], info["seed"]
    images = max(n, 10)  # image i of each split speaks utterance i: every split needs an image
    world = ShapesWorld(images, seed, info["image_size"])
    write_shapes_world(root / "world", images, seed, info["image_size"], progress=False)
    entries = [_utterance(world, seed, s, i) for s, k in split_sizes(n).items() for i in range(k)]
    for split in split_sizes(n):
        (root / "audio" / split).mkdir(parents=True)
    # espeak-ng runs as a subprocess: threads overlap the processes, each job has its own temporary files
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        done = list(tqdm(pool.map(lambda e: _speak(root, e), entries), total=len(entries),
                         disable=not progress, desc="spoken Shapes World", unit="utt"))
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in done)
    with open(root / "captions.json", "w", encoding="utf-8") as f:  # last: write_dataset_folder's completion mark
        json.dump({"info": info, "manifest": "manifest.jsonl", "world": "world/captions.json"}, f)


def write_shapes_speech(out_dir: str | os.PathLike, n: int = 300, seed: int = 0, image_size: int = 64,
                        progress: bool = True) -> Path:
    """Write spoken Shapes World: `audio/{split}/*.wav` (16 kHz mono), `manifest.jsonl` and `world/`.

    Utterance `i` of a split speaks one question or one caption of image `i` of that split of the
    Shapes World written to `world/` (same n and seed). Manifest lines: {"audio", "transcript",
    "split", "voice", "speed", "pitch", "snr_db" (null: clean), "noise", "reverb", "seed", "source"
    ("question" | "caption"), "image", "question_id" (null for captions), "duration"}; paths are
    relative to the folder. Test utterances use only `TEST_VOICES`. Written atomically with
    `write_dataset_folder` (its captions.json holds the generator's settings); the same call again
    returns at once.

    Raises:
        DataError: espeak-ng is missing (the message names `out_dir`).
        ConfigError: `out_dir` holds something else.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = write_shapes_speech(f"{tmp.name}/speech", n=10, progress=False)  # doctest: +SKIP
        >>> [json.loads(line)["split"] for line in open(root / "manifest.jsonl")]  # doctest: +SKIP
        ['train', 'train', 'train', 'train', 'train', 'train', 'train', 'train', 'val', 'test']
        >>> tmp.cleanup()
    """
    if not isinstance(n, int) or n < 3:
        raise DataError(f"write_shapes_speech: n must be an integer of at least 3, got {n!r}")
    info = {"description": "spoken Shapes World", "generator": "polymodal.data.speech", "version": VERSION,
            "n": n, "seed": int(seed), "image_size": image_size, "sample_rate": SAMPLE_RATE,
            "test_voices": list(TEST_VOICES)}
    if not espeak_available():
        raise DataError(f"{out_dir}: cannot synthesize speech: espeak-ng not found on PATH; {INSTALL_HINT}")
    return write_dataset_folder(out_dir, info, lambda root: _write(root, info, progress), "a spoken Shapes World",
                                files=("captions.json", "manifest.jsonl"))
