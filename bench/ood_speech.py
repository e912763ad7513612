"""Does the speech recognizer know when a recording is unlike its training audio? (issue 22, speech side)

    OMP_NUM_THREADS=1 python bench/ood_speech.py

The bundled recognizer (assets/shapes_asr) carries Mahalanobis statistics of its own encoder states,
mean-pooled over time (`SpeechRecognizer.ood_features`), fitted at the end of `polymodal train
configs/asr.yaml` on the 2400 training utterances of spoken Shapes World (n=3000, seed 0), the threshold
at the 98th percentile of the validation utterances. Scored here: the test split (voices never heard in
training, clean and noisy) against outside recordings made here: white and pink noise, pure tones,
chords, the test utterances played backwards (speech-like sound, no words), and speech in a voice family
espeak-ng offers but training never used (non-English voices reading English). Writes
docs/results/ood_speech.json and docs/ood_speech.md.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from polymodal import load
from polymodal.assets import ASSETS, BUNDLED_ASR
from polymodal.data.audio import load_audio
from polymodal.data.speech import Voicing, coloured_noise, espeak_available, synthesize
from polymodal.eval.ood import auroc, input_features
from polymodal.train.asr import _splits, speech_folder
from polymodal.train.tasks import load_task_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS, PAGE = ROOT / "docs" / "results" / "ood_speech.json", ROOT / "docs" / "ood_speech.md"
COMMAND = "OMP_NUM_THREADS=1 python bench/ood_speech.py"
PER_SET, RATE = 100, 16000
UNSEEN_VOICES = ("de", "fr", "es", "it")  # espeak-ng voices for other languages: an accent training never heard


def outside_sets(test_waves: list[np.ndarray], rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    t = np.arange(2 * RATE) / RATE
    sets = {
        "white noise": [0.1 * coloured_noise(2 * RATE, "white", rng) for _ in range(PER_SET)],
        "pink noise": [0.1 * coloured_noise(2 * RATE, "pink", rng) for _ in range(PER_SET)],
        "pure tones": [0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) for _ in range(PER_SET)],
        "chords": [0.1 * sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 1000, 3)) for _ in range(PER_SET)],
        "test speech played backwards": [w[::-1].copy() for w in test_waves],
    }
    if espeak_available():
        texts = ["what colour is the circle", "how many shapes are there", "a large red square",
                 "is there a small blue star", "the triangle is left of the hexagon"]
        work = Path(tempfile.mkdtemp())
        try:
            sets["unseen voices (de, fr, es, it) reading English"] = [
                synthesize(random.Random(i).choice(texts), Voicing(voice=UNSEEN_VOICES[i % 4]), work)
                for i in range(40)]
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {k: [np.asarray(w, dtype=np.float32) for w in v] for k, v in sets.items()}


def main() -> None:
    model = load(ASSETS / BUNDLED_ASR).eval()
    stats = model.ood_stats
    _, cfg = load_task_config("configs/asr.yaml", [])
    test = _splits(cfg, speech_folder(cfg.data, False))[cfg.data.test_split]
    test_waves = [load_audio(r.audio, RATE).numpy() for r in test[:PER_SET]]
    in_scores = stats.score(input_features(model, test_waves))
    rows = {"Shapes World test (held-out voices)": {"n": len(test_waves),
                                                  "flagged": float((in_scores > stats.threshold).float().mean())}}
    for name, waves in outside_sets(test_waves, np.random.default_rng(0)).items():
        scores = stats.score(input_features(model, waves))
        rows[name] = {"n": len(waves), "flagged": float((scores > stats.threshold).float().mean()),
                      "auroc": auroc(in_scores, scores)}
    result = {"model": BUNDLED_ASR, "threshold": stats.threshold, "sets": rows, "command": COMMAND}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = ["# Out-of-distribution recordings: the speech recognizer", "",
             "Written by `bench/ood_speech.py` (its docstring says how the statistics are made).", "",
             f"    {COMMAND}", "", f"Threshold {stats.threshold:.2f} (98th percentile of the validation utterances).",
             "", "| recordings | n | flagged as unlike the training audio | AUROC vs test |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['n']} | {r['flagged']:.1%} | {r['auroc']:.3f} |" if "auroc" in r else
              f"| {name} | {r['n']} | {r['flagged']:.1%} | - |" for name, r in rows.items()]
    lines += ["", "`polymodal transcribe` warns in one line on stderr for a flagged recording, `POST /v1/transcribe` "
              "(and the transcript of a spoken `/v1/vqa` question) returns `in_distribution` and `ood_score`.", ""]
    PAGE.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
