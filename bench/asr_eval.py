"""The project's speech recognizer beside PocketSphinx, on the very utterances of bench/speech_baseline.py.

    OMP_NUM_THREADS=1 polymodal train configs/asr.yaml
    OMP_NUM_THREADS=1 python bench/asr_eval.py --model runs/asr/model     # about a minute on 1 CPU core

The test split of spoken Shapes World n=300, seed 0 (voices never heard in training) as written, and the same
utterances re-synthesized (same voice, speed and pitch, no reverb) clean and with white noise at 20, 10, 5 and
0 dB: WER and CER, greedy and beam + lexicon, next to PocketSphinx's figures from
docs/results/speech_baseline.json; `polymodal train`'s own test figures (300 held-out-voice utterances of
n=3000) come along from the run's metrics.json. Writes docs/results/asr.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _report import machine
from speech_baseline import SWEEP, _score, _voicing

from polymodal.api import load
from polymodal.data.speech import synthesize, write_shapes_speech

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "asr.json"
BASELINE = ROOT / "docs" / "results" / "speech_baseline.json"


def run(model_dir: Path, n: int, seed: int, data: Path) -> dict:
    model = load(model_dir)
    root = write_shapes_speech(data, n=n, seed=seed, progress=False)
    test = [r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines()) if r["split"] == "test"]
    refs = [r["transcript"] for r in test]
    out: dict = {"as written": {}, "by SNR": {}}
    for name, beam in (("greedy", 1), ("beam + lexicon", model.cfg.beam_size)):
        start = time.perf_counter()
        hyps = model.transcribe([root / r["audio"] for r in test], beam_size=beam)
        out["as written"][name] = {**_score(hyps, refs), "seconds_per_utterance": round(
            (time.perf_counter() - start) / len(test), 3)}
        out["by SNR"][name] = {}
        for snr in SWEEP:
            waves = [synthesize(r["transcript"], _voicing(r, snr)) for r in test]
            out["by SNR"][name]["clean" if snr is None else f"{snr:g} dB"] = _score(
                model.transcribe(waves, beam_size=beam), refs)
        print(name, out["as written"][name], out["by SNR"][name])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/asr/model"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("runs/shapes_speech_300"))
    args = parser.parse_args()
    metrics = args.model.parent / "metrics.json"
    result = {"command": "OMP_NUM_THREADS=1 python bench/asr_eval.py", "source": "bench/asr_eval.py",
              "machine": machine(), "model": str(args.model), "n": args.n, "seed": args.seed,
              **run(args.model, args.n, args.seed, args.data),
              "pocketsphinx": json.loads(BASELINE.read_text())["by SNR"] if BASELINE.is_file() else None,
              "training run": json.loads(metrics.read_text()) if metrics.is_file() else None}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
