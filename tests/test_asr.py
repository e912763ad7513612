"""The CTC speech recognizer: decoding on hand-made frame probabilities, a tiny model that learns a few synthesized
utterances (tones standing for letters; espeak-ng speech when it is installed), save/load, `polymodal transcribe`."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from polymodal.data.audio import tone, write_wav
from polymodal.models.asr import ASRConfig, SpeechRecognizer
from polymodal.text.ctc import CharVocab, Lexicon, beam_decode, greedy_decode, prefix_beam_search

from .test_cli_matrix import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = CharVocab()
FREQS = {"a": 400.0, "b": 900.0, "c": 1800.0, " ": 3500.0}  # one tone per character
TEXTS = ["ab", "ba c", "cab", "abc"]


def tone_speech(text: str) -> torch.Tensor:
    """`text` as a tune: 0.12 s of its character's tone per character, 0.04 s of silence between them."""
    gap = torch.zeros(640)
    return torch.cat([torch.cat([tone(FREQS[c], 0.12), gap]) for c in text] + [gap])


def one_hot_log_probs(symbols: list[int], size: int = len(VOCAB) + 1) -> np.ndarray:
    probs = np.full((len(symbols), size), 1e-4)
    probs[np.arange(len(symbols)), symbols] = 1.0
    return np.log(probs / probs.sum(-1, keepdims=True))


def ids(text: str) -> list[int]:
    return VOCAB.encode(text)


def train_tiny(texts: list[str], waves: list[torch.Tensor], steps: int, seed: int = 0) -> SpeechRecognizer:
    torch.manual_seed(seed)
    cfg = ASRConfig(n_mels=40, channels=8, dim=48, hidden=48, layers=1, dropout=0.0, freq_masks=0, time_masks=0)
    model = SpeechRecognizer(cfg, sorted(Lexicon.build(texts).words))
    mels = [model.features(w) for w in waves]
    from polymodal.train.asr import Utterances

    batch = Utterances.collate([(m, torch.tensor(model.vocab.encode(t))) for m, t in zip(mels, texts, strict=True)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        _, losses = model(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> SpeechRecognizer:
    torch.set_num_threads(1)
    return train_tiny(TEXTS, [tone_speech(t) for t in TEXTS], steps=300)


# ----------------------------------------------------------------------------- decoding on hand-made logits
def test_greedy_merges_repeats_and_drops_blanks():
    frames = [0, *ids("a"), *ids("a"), 0, *ids("a"), VOCAB.index[" "], 0, *ids("b"), *ids("b"), 0]
    assert greedy_decode(one_hot_log_probs(frames), VOCAB) == "aa b"
    assert greedy_decode(one_hot_log_probs([0, 0, 0]), VOCAB) == ""


def test_beam_finds_the_transcript_that_no_single_path_wins():
    # every frame: blank 0.6, "a" 0.4. The best path is all blanks (0.216), but "a" sums 0.688 over its alignments
    # (all 8 paths minus the blank one and "a _ a", which reads "aa")
    probs = np.zeros((3, len(VOCAB) + 1))
    probs[:, 0], probs[:, ids("a")[0]] = 0.6, 0.4
    logp = np.log(probs + 1e-12)
    greedy, beam = greedy_decode(logp, VOCAB), beam_decode(logp, VOCAB)
    scores = dict(prefix_beam_search(logp, VOCAB, beam_size=4))
    assert (greedy, beam) == ("", "a")
    assert math.exp(scores["a"]) == pytest.approx(1 - 0.6**3 - 0.4 * 0.6 * 0.4, abs=1e-6)
    assert scores[beam] >= scores[greedy]


def test_lexicon_snaps_a_misheard_word():
    # frames spell "rad" with "e" and "o" close behind the "a": the lexicon picks the likelier real word
    probs = np.full((7, len(VOCAB) + 1), 1e-4)
    for t, (c, p) in enumerate([("r", 1.0), (None, 1.0), ("a", 0.5), (None, 1.0), ("d", 1.0), (None, 1.0)]):
        probs[t, 0 if c is None else ids(c)[0]] = p
    probs[2, ids("e")[0]], probs[2, ids("o")[0]] = 0.3, 0.2
    probs[6, 0] = 1.0
    logp = np.log(probs / probs.sum(-1, keepdims=True))
    assert beam_decode(logp, VOCAB) == "rad"
    assert beam_decode(logp, VOCAB, lexicon=Lexicon({"red", "rod"})) == "red"


# ----------------------------------------------------------------------------- a tiny model learns
def test_tiny_model_learns_tone_utterances(tiny):
    waves = [tone_speech(t) for t in TEXTS]
    assert tiny.transcribe(waves, beam_size=1) == TEXTS
    assert tiny.transcribe(waves) == TEXTS  # beam + lexicon


def test_save_load_round_trip(tiny, tmp_path):
    from polymodal.api import load

    folder = tiny.save_pretrained(tmp_path / "asr")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = load(folder)
    mel = tiny.features(tone_speech("cab"))[None]
    lengths = torch.tensor([mel.shape[-1]])
    with torch.inference_mode():
        assert torch.equal(tiny.log_probs(mel, lengths)[0], again.log_probs(mel, lengths)[0])
    assert again.lexicon.words == tiny.lexicon.words and again.transcribe([tone_speech("ba c")]) == ["ba c"]


def test_cli_transcribe(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "asr")
    paths = [write_wav(tmp_path / f"{i}.wav", tone_speech(t), 16000) for i, t in enumerate(TEXTS[:2])]
    code, out, err = run_cli(["transcribe", str(folder), *map(str, paths), "--beam", "1"])
    assert (code, out.splitlines()) == (0, TEXTS[:2]), err
    (tmp_path / "notes.wav").write_text("not audio")
    for bad in (tmp_path / "missing.wav", tmp_path / "notes.wav"):
        code, out, err = run_cli(["transcribe", str(folder), str(paths[0]), str(bad)])
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and bad.name in lines[0]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (`make speech`)")
def test_tiny_model_learns_espeak_words():
    from polymodal.data.speech import Voicing, synthesize

    texts = ["red circle", "blue square", "green"]
    waves = [torch.from_numpy(synthesize(t, Voicing("en-us+m1", speed=170))) for t in texts]
    model = train_tiny(texts, waves, steps=200)
    assert model.transcribe(waves) == texts
