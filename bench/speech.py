"""Speech speed: the recognizer's real-time factor, and one spoken VQA turn (a 2 s question) end to end.

    python bench/speech.py [--runs 15] [--utterances 8]      # leave OMP_NUM_THREADS unset: 2-core figures

Needs espeak-ng (the questions are synthesized here). The bundled recognizer (assets/shapes_asr) transcribes
Shapes World test questions spoken by held-out voices, one utterance per call as a live question comes;
real-time factor = seconds of compute per second of audio (log-mel, network and CTC decoding, from the
waveform), greedy and beam + lexicon (the model's default), median of --runs passes over the set. A spoken VQA
turn is a 2.0 s WAV question about a Shapes World image: decode the upload, transcribe it, answer with the
bundled VQA model (plus the out-of-distribution check the server runs), in process and through POST /v1/vqa
(FastAPI's in-process TestClient: multipart parsing included, no network), median of --runs turns after a
warm-up; at torch's default threads (one per core) and at one thread, side by side. Targets (issue 20):
real-time factor <= 0.05 on 2 cores, a turn <= 300 ms. Writes the "speech"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, peak_rss_mb, write_section  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.assets import ASSETS, BUNDLED_ASR, BUNDLED_VQA  # noqa: E402
from polymodal.data.audio import load_audio, write_wav  # noqa: E402
from polymodal.data.shapes import ShapesWorld, render, sample_scene  # noqa: E402
from polymodal.data.speech import TEST_VOICES, Voicing, espeak_available, synthesize  # noqa: E402
from polymodal.eval.ood import check_inputs  # noqa: E402

RATE = 16000
TURN_SECONDS = 2.0
RTF_TARGET, TURN_TARGET_MS = 0.05, 300.0
MS = {"format": ".0f", "unit": " ms"}
DESCRIBED = {"real-time factor, beam": {"what": "recognizer compute per second of audio (beam 8 + lexicon)",
                                        "format": ".3f", "unit": ""},
             "real-time factor, greedy": {"what": "recognizer compute per second of audio (greedy)",
                                          "format": ".3f", "unit": ""},
             "spoken VQA turn (ms)": {"what": "2 s spoken question: decode + ASR + VQA, in process", **MS},
             "spoken VQA turn, /v1/vqa (ms)": {"what": "2 s spoken question through POST /v1/vqa", **MS}}


def questions(n: int) -> list[tuple[str, np.ndarray]]:
    """`n` Shapes World test questions, each spoken by a held-out voice (clean), as 16 kHz waveforms."""
    world, rng, out = ShapesWorld(10 * max(n, 10), 0, 64), random.Random(0), []  # test = a tenth
    for i in range(n):
        text = world.questions("test", i)[0]["question"].rstrip("?")
        out.append((text, synthesize(text, Voicing(TEST_VOICES[i % len(TEST_VOICES)], speed=rng.choice((150, 170))))))
    return out


def two_second_question() -> tuple[str, bytes]:
    """A question spoken in at most 2.0 s, padded with silence to exactly 2.0 s, as WAV bytes."""
    text = "what colour is the small triangle"
    for speed in (150, 170, 190, 210):
        wave = synthesize(text, Voicing("en-us+m1", speed=speed))
        if len(wave) <= TURN_SECONDS * RATE:
            break
    wave = np.pad(wave, (0, int(TURN_SECONDS * RATE) - len(wave)))
    with tempfile.TemporaryDirectory() as tmp:
        return text, write_wav(Path(tmp) / "q.wav", wave, RATE).read_bytes()


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_time_factors(asr, utterances: list[tuple[str, np.ndarray]], runs: int) -> dict[str, float]:
    audio_s = sum(len(w) for _, w in utterances) / RATE
    out = {}
    for name, beam in (("greedy", 1), ("beam", asr.cfg.beam_size)):
        seconds = median_seconds(lambda beam=beam: [asr.transcribe([w], beam_size=beam) for _, w in utterances], runs)
        out[name] = seconds / audio_s
    right = sum(asr.transcribe([w])[0] == text for text, w in utterances)
    out["correct"] = right
    return out


def turn_latency(asr, vqa, wav: bytes, runs: int) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    image = render(sample_scene(random.Random(7), min_objects=2, max_objects=3), size=64)
    png = io.BytesIO()
    image.save(png, "PNG")

    def in_process() -> str:
        question = asr.transcribe([load_audio(wav, RATE, max_seconds=60.0, name="question.wav")])[0]
        answer = vqa.answer_topk(image, question, k=3)[0][0][0]
        check_inputs(vqa, [image])
        return answer

    served = {"a": median_seconds(in_process, runs)}
    with TestClient(create_app({"shapes_vqa": vqa, "shapes_asr": asr})) as client:
        files = {"image": ("scene.png", png.getvalue(), "image/png"), "audio": ("question.wav", wav, "audio/wav")}

        def over_http() -> dict:
            reply = client.post("/v1/vqa", files=files)
            assert reply.status_code == 200, reply.text
            return reply.json()

        served["b"] = median_seconds(over_http, runs)
        served["heard"] = over_http()["transcript"]["text"]
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs; the median is reported")
    parser.add_argument("--utterances", type=int, default=8, help="held-out-voice questions for the real-time factor")
    args = parser.parse_args()
    if not espeak_available():
        sys.exit("bench/speech.py needs espeak-ng to synthesize its questions: apt-get install espeak-ng")
    asr, vqa = load(ASSETS / BUNDLED_ASR).eval(), load(ASSETS / BUNDLED_VQA).eval()
    utterances = questions(args.utterances)
    audio_s = sum(len(w) for _, w in utterances) / RATE
    text, wav = two_second_question()
    default_threads, rows, figures = torch.get_num_threads(), [], {}
    # torch's default threads (one per core) and one thread, side by side: on a shared machine the default
    # can lose to one thread when other jobs hold the cores (the load average is recorded with the run)
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        rtf = real_time_factors(asr, utterances, args.runs)
        turn = turn_latency(asr, vqa, wav, args.runs)
        print(f"{threads} thread(s): real-time factor greedy {rtf['greedy']:.4f}, beam {rtf['beam']:.4f} "
              f"({rtf['correct']}/{len(utterances)} exact); 2 s spoken VQA turn {1000 * turn['a']:.0f} ms in "
              f"process, {1000 * turn['b']:.0f} ms via /v1/vqa (heard {turn['heard']!r})")
        rows.append((threads, rtf, turn))
        suffix = "" if threads == default_threads else f", {threads} thread"
        figures.update({f"real-time factor, beam{suffix}": rtf["beam"], f"real-time factor, greedy{suffix}": rtf["greedy"],
                        f"spoken VQA turn (ms){suffix}": 1000 * turn["a"],
                        f"spoken VQA turn, /v1/vqa (ms){suffix}": 1000 * turn["b"]})
    torch.set_num_threads(default_threads)

    def verdict(value: float, target: float) -> str:
        return "meets" if value <= target else "**misses**"

    table = "\n".join(
        f"| {t} | {r['greedy']:.4f} | {r['beam']:.4f} ({verdict(r['beam'], RTF_TARGET)}) | {r['correct']}/{len(utterances)} | "
        f"{1000 * u['a']:.0f} ms ({verdict(1000 * u['a'], TURN_TARGET_MS)}) | "
        f"{1000 * u['b']:.0f} ms ({verdict(1000 * u['b'], TURN_TARGET_MS)}) |" for t, r, u in rows)
    write_section("speech", f"""
## Speech: recognizer real-time factor and a spoken VQA turn

`python bench/speech.py` — bundled recognizer ({BUNDLED_ASR}) and VQA model ({BUNDLED_VQA}), {machine()},
median of {args.runs} runs after a warm-up, at torch's default threads and at one. Real-time factor: {len(utterances)}
Shapes World test questions spoken by held-out espeak-ng voices ({audio_s:.1f} s of audio), transcribed one per call
from the waveform. Turn: a {TURN_SECONDS:.1f} s WAV question ("{text}", heard as "{rows[0][2]['heard']}"): decode +
transcribe + answer + out-of-distribution check, in process and through POST /v1/vqa (TestClient). Targets
(issue 20): real-time factor <= {RTF_TARGET} on 2 cores, a turn <= {TURN_TARGET_MS:.0f} ms.

| torch threads | real-time factor, greedy | real-time factor, beam 8 + lexicon (default) | exact | turn, in process | turn, /v1/vqa |
|---|---|---|---|---|---|
{table}

Peak RSS {peak_rss_mb():.0f} MB.
""", figures=figures, described={**DESCRIBED, **{f"{k}, 1 thread": {**v, "what": v["what"] + ", 1 torch thread"}
                                                  for k, v in DESCRIBED.items()}})


if __name__ == "__main__":
    main()
