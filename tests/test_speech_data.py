"""Spoken Shapes World (espeak-ng synthesis, noise, held-out voices), the speech readers, WER and PocketSphinx."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from polymodal.data.audio import tone, write_wav
from polymodal.data.records import SkipReport
from polymodal.data.speech import TEST_VOICES, TRAIN_VOICES, VOICES, Voicing, synthesize, write_shapes_speech
from polymodal.data.speech_formats import load_speech, read_speech
from polymodal.errors import DataError, InputError
from polymodal.eval.asr_metrics import character_error_rate, word_error_rate

pytestmark = pytest.mark.usefixtures("one_thread")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (`make speech` or apt-get install espeak-ng)")
QUESTION = "what colour is the circle"


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (`make speech` or apt-get install espeak-ng)")
    return write_shapes_speech(tmp_path_factory.mktemp("speech") / "spoken", n=20, seed=3, progress=False)


def _rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def _measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of `noisy` against `clean`, whatever gain was applied to the mix (least-squares fit of the gain)."""
    n = min(len(clean), len(noisy))
    clean, noisy = clean[:n].astype(np.float64), noisy[:n].astype(np.float64)
    gain = float(noisy @ clean / (clean @ clean))
    return float(10 * np.log10(np.sum((gain * clean) ** 2) / np.sum((noisy - gain * clean) ** 2)))


def test_voices_are_held_out_whole():
    assert not set(TEST_VOICES) & set(TRAIN_VOICES) and set(TEST_VOICES) | set(TRAIN_VOICES) == set(VOICES)
    accents = lambda vs: {v.split("+")[0] for v in vs}  # noqa: E731
    assert accents(TEST_VOICES) == accents(TRAIN_VOICES)  # only the combinations are new


@needs_espeak
def test_manifest_and_wavs(spoken):
    rows = _rows(spoken)
    assert [r["split"] for r in rows].count("test") == 2 and len(rows) == 20
    for r in rows:
        with wave.open(str(spoken / r["audio"])) as w:
            assert (w.getframerate(), w.getnchannels()) == (16000, 1)
            assert w.getnframes() / 16000 == pytest.approx(r["duration"], abs=1e-3)
        # about 2 to 5 words a second at 130-190 words per minute, plus espeak-ng's pauses
        assert 0.15 < r["duration"] / len(r["transcript"].split()) < 1.0, r
        assert (spoken / r["image"]).is_file() and r["source"] in ("question", "caption")
        assert (r["question_id"] is not None) == (r["source"] == "question")
        assert r["voice"] in (TEST_VOICES if r["split"] == "test" else TRAIN_VOICES)
    assert write_shapes_speech(spoken, n=20, seed=3, progress=False) == spoken  # already there: reused


@needs_espeak
@pytest.mark.parametrize("noise", ["white", "pink"])
def test_snr_is_applied(noise):
    base = Voicing("en-gb+f2", speed=170, pitch=50, seed=5)
    clean = synthesize(QUESTION, base)
    for snr in (20.0, 5.0):
        noisy = synthesize(QUESTION, Voicing(**{**base.__dict__, "snr_db": snr, "noise": noise}))
        assert _measured_snr(clean, noisy) == pytest.approx(snr, abs=0.3)


@needs_espeak
def test_manifest_snr_matches_the_wav(spoken):
    from polymodal.data.audio import load_audio

    noisy = [r for r in _rows(spoken) if r["snr_db"] is not None]
    assert noisy, "seed 3 should give some noisy utterances"
    for r in noisy[:3]:
        fields = {k: r[k] for k in ("voice", "speed", "pitch", "noise", "reverb", "seed")}
        clean = synthesize(r["transcript"], Voicing(**fields))
        assert _measured_snr(clean, load_audio(spoken / r["audio"]).numpy()) == pytest.approx(r["snr_db"], abs=0.5)


@needs_espeak
def test_reader_reads_the_generated_manifest(spoken):
    records = read_speech(spoken)
    assert len(records) == 20 and {r.split for r in records} == {"train", "val", "test"}
    assert load_speech(records[0]).shape[0] > 8000


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    for utt in ("19-198-0000", "19-198-0001"):
        write_wav(chapter / f"{utt}.wav", tone(440, 0.25), 16000)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 A RED CIRCLE\n19-198-0001 WHAT SHAPE\n19-198-0002\n")
    report = SkipReport()
    records = read_speech(tmp_path / "LibriSpeech", report)
    assert [(r.id, r.transcript, r.split) for r in records] == [("19-198-0000", "A RED CIRCLE", "test"),
                                                                ("19-198-0001", "WHAT SHAPE", "test")]
    assert report.count == 1 and "no transcript" in report.summary()
    (chapter / "19-198.trans.txt").write_text("19-198-0000 A RED CIRCLE\n19-198-0005 GONE\n")
    with pytest.raises(DataError, match="19-198-0005.flac: audio file not found"):
        read_speech(tmp_path / "LibriSpeech")


def test_jsonl_manifest_skips_bad_records(tmp_path):
    write_wav(tmp_path / "a.wav", tone(440, 0.5), 16000)
    lines = [{"audio": "a.wav", "text": "a red circle", "split": "train"}, "not json", {"audio": "a.wav"},
             {"text": "no audio"}, {"audio": "../outside.wav", "text": "escapes"},
             {"audio": "a.wav", "transcript": "what shape", "id": "q2"}]
    (tmp_path / "m.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    report = SkipReport()
    records = read_speech(tmp_path / "m.jsonl", report)
    assert [(r.id, r.transcript, r.split) for r in records] == [("a", "a red circle", "train"), ("q2", "what shape", None)]
    assert report.count == 4 and report.reasons["line is not JSON"] == 1
    (tmp_path / "m.jsonl").write_text('{"audio": "gone.wav", "text": "x"}\n')
    with pytest.raises(DataError, match=r"gone\.wav: audio file not found \(m\.jsonl line 1\)"):
        read_speech(tmp_path / "m.jsonl")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    (tmp_path / "m.jsonl").write_text('{"audio": "broken.wav", "text": "x"}\n')
    with pytest.raises(DataError, match="broken.wav") as err:
        load_speech(read_speech(tmp_path / "m.jsonl")[0])
    assert "\n" not in str(err.value)


def test_error_rates_on_known_strings():
    assert word_error_rate(["a red square"], ["a red circle"]) == pytest.approx(1 / 3)
    assert word_error_rate(["What COLOR is the circle?"], [QUESTION]) == 0.0  # normalised alike
    assert word_error_rate(["a big red circle", ""], ["a red circle", "what shape"]) == pytest.approx(3 / 5)
    assert character_error_rate(["a rod circle"], ["a red circle"]) == pytest.approx(1 / 12)
    with pytest.raises(InputError, match="2 hypotheses but 1 references"):
        word_error_rate(["a", "b"], ["a"])


@needs_espeak
def test_pocketsphinx_hears_a_question(tmp_path):
    pytest.importorskip("pocketsphinx", reason="pocketsphinx is not installed")
    from polymodal.data.shapes import ShapesWorld
    from polymodal.eval.asr_metrics import pocketsphinx_transcribe, write_bigram_lm

    world = ShapesWorld(n=60, seed=1, image_size=16)
    texts = [q["question"] for i in range(48) for q in world.questions("train", i)]
    lm = write_bigram_lm(texts, tmp_path / "shapes.lm")
    path = write_wav(tmp_path / "q.wav", synthesize(QUESTION, Voicing("en-us+m1", speed=150)), 16000)
    hypothesis = pocketsphinx_transcribe(path, lm)
    assert word_error_rate([hypothesis], [QUESTION]) <= 0.4, hypothesis


def test_asr_task_trains_scores_its_test_split_and_saves_ood_statistics(spoken, tmp_path):
    import polymodal
    from polymodal.train.tasks import load_task_config

    task, cfg = load_task_config("configs/asr.yaml", [
        f"data.path={spoken}", "model.channels=4", "model.dim=16", "model.hidden=16", "model.layers=1",
        "train.steps=3", "train.batch_size=4", "train.eval_every=3", "train.checkpoint_every=3",
        "train.warmup_steps=1", f"train.out_dir={tmp_path / 'run'}"])
    summary = task(cfg, progress=False)
    assert summary["step"] == 3 and 0.0 <= summary["test"]["greedy"]["wer"] and (tmp_path / "run" / "metrics.json").is_file()
    model = polymodal.load(tmp_path / "run")
    assert model.ood_stats is not None and summary["ood_threshold"] == pytest.approx(model.ood_stats.threshold)
