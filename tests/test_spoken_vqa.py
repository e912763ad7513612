"""End-to-end spoken VQA: the spoken question writer, the model (train, save, reload, answer audio), the task,
the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import polymodal
from polymodal.data.audio import load_audio, tone
from polymodal.data.speech import TEST_VOICES, TRAIN_VOICES, espeak_available
from polymodal.models.asr import ASRConfig, SpeechRecognizer, pad_mels
from polymodal.models.spoken_vqa import SpokenVQAModel
from polymodal.models.vqa import VQAModel, VQAModelConfig
from polymodal.nn.fusion.base import FusionConfig
from polymodal.nn.question import QuestionEncoderConfig
from polymodal.text.tokenizer import WordTokenizer

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")
NO_ESPEAK = "espeak-ng is not installed (apt-get install espeak-ng)"
needs_espeak = pytest.mark.skipif(not espeak_available(), reason=NO_ESPEAK)
SIZES = {"train": 8, "val": 3, "test": 3}


def tiny_parts() -> tuple[VQAModel, SpeechRecognizer]:
    """A tiny text VQA model (answers yes / no) and a tiny recognizer: the parts a spoken VQA model starts from."""
    torch.manual_seed(0)
    cfg = VQAModelConfig(image_size=32, dim=16, question=QuestionEncoderConfig(embed_dim=8, hidden_dim=16),
                         fusion=FusionConfig(name="joint", dim=16, hidden=32, heads=2, layers=1, dropout=0.0))
    cfg.encoder.width, cfg.encoder.freeze = 8, True
    vqa = VQAModel(cfg, WordTokenizer.build(["is it high?"]), ["yes", "no"])
    return vqa, SpeechRecognizer(ASRConfig(n_mels=40, channels=4, dim=16, hidden=8, layers=1))


@pytest.fixture(scope="module")
def spoken_folder(tmp_path_factory):
    from polymodal.data.shapes import write_shapes_world
    from polymodal.data.spoken_qa import write_spoken_qa

    if not espeak_available():
        pytest.skip(NO_ESPEAK)
    tmp = tmp_path_factory.mktemp("spoken_qa")
    world = write_shapes_world(tmp / "world", n=20, image_size=32, progress=False)
    return write_spoken_qa(tmp / "spoken", world, SIZES, progress=False), world


@needs_espeak
def test_writer_speaks_each_question_joined_to_its_answers(spoken_folder):
    from polymodal.data.qa import read_qa
    from polymodal.data.spoken_qa import read_spoken_qa

    folder, world = spoken_folder
    records = read_spoken_qa(folder)
    assert [sum(r.split == s for r in records) for s in SIZES] == list(SIZES.values())
    text = {(r.image, r.question): r.answers for s in SIZES for r in read_qa(world / "qa.jsonl", split=s)}
    for r in records:
        assert text[(r.image, r.question)] == r.answers  # joined to the VQA record
        assert r.voice in (TEST_VOICES if r.split == "test" else TRAIN_VOICES)
        wave = load_audio(r.audio, 16000)
        assert 0.5 < len(wave) / 16000 < 5.0 and abs(len(wave) / 16000 - r.duration) < 0.01
    manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert {"id", "image", "question", "answers", "type", "voice", "snr_db", "audio"} <= set(manifest[0])


def test_a_tiny_model_learns_saves_reloads_and_answers_audio(tmp_path):
    """High tone -> "yes", low tone -> "no": trained a few steps, then the same answers after polymodal.load."""
    vqa, asr = tiny_parts()
    frozen = SpokenVQAModel.from_parts(vqa, asr)
    assert torch.equal(frozen.question.encoder.lstm.weight_ih_l0, asr.encoder.lstm.weight_ih_l0)  # the front end
    assert not any(p.requires_grad for p in frozen.question.encoder.parameters())  # frozen by default
    assert torch.equal(frozen.classifier[1].weight, vqa.classifier[1].weight)  # answers as the text model did
    # an untrained, frozen tiny front end hears two tones alike: here it learns too
    model = SpokenVQAModel.from_parts(vqa, asr, QuestionEncoderConfig(hidden_dim=16, layers=1, dropout=0.0),
                                      freeze_speech=False, pool=1)
    waves = [tone(1800, 1.0), tone(300, 0.8)]
    mel, lengths = pad_mels([model.question.features(w) for w in waves])
    images = [torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)]
    batch = {"images": torch.stack(images), "mel": mel, "mel_lengths": lengths, "targets": torch.eye(2)}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = None
    for _ in range(60):
        loss = model(batch)[1]["loss"]
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first / 4
    assert model.answer(images, waves) == ["yes", "no"]
    model.temperature = 1.5
    loaded = polymodal.load(model.save_pretrained(tmp_path / "spoken"))
    assert isinstance(loaded, SpokenVQAModel) and loaded.temperature == 1.5
    assert not (tmp_path / "spoken" / "tokenizer.json").exists()
    assert torch.allclose(loaded.predict(images, waves), model.predict(images, waves))
    top = loaded.answer_topk(images[0], waves[0], k=2)[0]
    assert top[0][0] == "yes" and top[0][1] > top[1][1]
    with pytest.raises(polymodal.InputError, match="silence"):
        loaded.answer(images[0], torch.zeros(16000))


@needs_espeak
def test_the_task_trains_and_the_cli_answers_from_speech(spoken_folder, tmp_path, monkeypatch, capsys):
    from polymodal.train.tasks import load_task_config

    folder, _ = spoken_folder
    vqa, asr = tiny_parts()
    vqa.save_pretrained(tmp_path / "vqa")
    asr.save_pretrained(tmp_path / "asr")
    _, cfg = load_task_config(None, ["task=spoken_vqa", f"init_vqa={tmp_path / 'vqa'}",
                                     f"recognizer={tmp_path / 'asr'}", f"data.path={folder}", "adapter.hidden_dim=16",
                                     "train.steps=6",
                                     "train.batch_size=4", "train.eval_every=3", "train.eval_batches=0",
                                     "train.early_stop_metric=val_accuracy", f"train.out_dir={tmp_path / 'run'}"])
    summary = polymodal.registry.TASKS.get("spoken_vqa")(cfg, progress=False)
    assert summary["step"] == 6 and summary["test"]["questions"] == SIZES["test"]
    assert {"accuracy/clean", "accuracy/noisy"} & set(summary["test"])
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    test = next(r for r in records if r["split"] == "test")
    image = json.loads((folder / "captions.json").read_text())["info"]["world"] + "/" + test["image"]
    capsys.readouterr()  # what training printed
    code, out, err = polymodal_cli(monkeypatch, capsys, "vqa", str(tmp_path / "run"), image,
                                   "--audio", str(folder / test["audio"]), "--top", "--k", "2")
    assert code == 0, err
    assert out.splitlines()[0].startswith("answered from the speech directly")
    assert [line.split("\t")[0] in ("yes", "no") for line in out.splitlines()[1:]] == [True, True]
    code, _, err = polymodal_cli(monkeypatch, capsys, "vqa", str(tmp_path / "run"), image, "is it high?")
    assert code == 2 and "--audio QUESTION.wav" in err and "Traceback" not in err
