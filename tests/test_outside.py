"""The outside test bed (data/outside.py) and the VQA task's encoder pretraining off Shapes World."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from polymodal.config import EncoderConfig, TrainConfig
from polymodal.data.formats import read_coco, read_karpathy
from polymodal.data.outside import COLOURS, SYMBOLS, write_outside
from polymodal.data.qa import read_qa
from polymodal.data.shapes import SHAPES
from polymodal.errors import ConfigError
from polymodal.models.vqa import VQAModelConfig
from polymodal.nn.encoders import build_encoder
from polymodal.nn.fusion.base import FusionConfig
from polymodal.nn.question import QuestionEncoderConfig
from polymodal.train.answer_pretraining import AnswerProbe
from polymodal.train.pretraining import PretrainConfig, QADataConfig
from polymodal.train.vqa import VQAExperimentConfig, train_vqa

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    return write_outside(tmp_path_factory.mktemp("outside") / "data", n=30, seed=3, image_size=32, progress=False)


def test_the_generator_is_deterministic(outside, tmp_path):
    again = write_outside(tmp_path / "again", n=30, seed=3, image_size=32, progress=False)
    other = write_outside(tmp_path / "other", n=30, seed=4, image_size=32, progress=False)
    for name in ("qa.jsonl", "captions.json", "dataset_karpathy.json", "images/train/000000.png",
                 "images/test/000029.png"):
        assert (again / name).read_bytes() == (outside / name).read_bytes(), name
    assert (other / "qa.jsonl").read_bytes() != (outside / "qa.jsonl").read_bytes()
    assert (other / "images/train/000000.png").read_bytes() != (outside / "images/train/000000.png").read_bytes()
    assert write_outside(outside, n=30, seed=3, image_size=32, progress=False) == outside  # same data: kept as is
    with pytest.raises(ConfigError, match="is not an outside dataset"):
        write_outside(outside, n=31, seed=3, image_size=32, progress=False)


def test_the_files_read_back_with_polymodal_readers(outside):
    sizes = {"train": 24, "val": 3, "test": 3}
    for split, size in sizes.items():
        coco, karpathy = read_coco(outside / "captions.json", split=split), read_karpathy(
            outside / "dataset_karpathy.json", split=split)
        assert len(coco) == len(karpathy) == size
        assert [r.captions for r in coco] == [r.captions for r in karpathy]
        assert all(len(r.captions) == 3 for r in coco)
        questions = read_qa(outside / "qa.jsonl", split=split)
        assert {r.image for r in questions} == {r.image for r in coco}
    records = read_qa(outside / "qa.jsonl")
    assert Counter(r.split for r in records).keys() == sizes.keys()
    answers = {a for r in records for a in r.answers}
    assert answers & set(SYMBOLS) and answers & set(COLOURS) and {"yes", "no"} <= answers
    assert not answers & set(SHAPES)  # another world: no Shapes World shape
    types = Counter(r.type for r in records)
    assert types["colour"] == types["symbol"] == types["place"] == 30


def _tiny_cfg(path: str, out: str, **pretrain) -> VQAExperimentConfig:
    return VQAExperimentConfig(
        model=VQAModelConfig(encoder=EncoderConfig(name="small_cnn", width=4, freeze=True), image_size=32, dim=16,
                             question=QuestionEncoderConfig(embed_dim=8, hidden_dim=16, max_len=12),
                             fusion=FusionConfig(name="film", dim=16, hidden=16, dropout=0.0), dropout=0.0),
        data=QADataConfig(format="vqa", path=path),  # test_splits default: test, heldout (not in this file)
        pretrain=PretrainConfig(**{"steps": 3, "batch_size": 8, **pretrain}),
        train=TrainConfig(out_dir=out, steps=2, batch_size=8, warmup_steps=0, eval_every=0, checkpoint_every=0,
                          log_every=1000))


def test_off_shapes_world_the_encoder_learns_from_the_answers(outside, tmp_path, capsys):
    summary = train_vqa(_tiny_cfg(str(outside / "qa.jsonl"), str(tmp_path / "run")), progress=False)
    log = capsys.readouterr().out
    assert summary["encoder_pretraining"] == "answers"
    assert "encoder pretraining: data.format is not shapes" in log and "pretrain.kind=answers" in log
    assert "no 'heldout' questions" in log and "heldout" not in summary and summary["test"]["questions"] > 0
    run = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert "answer-encoders" in run["model"]["encoder"]["pretrained"]


def test_no_pretraining_and_a_bad_kind(outside, tmp_path, capsys):
    summary = train_vqa(_tiny_cfg(str(outside / "qa.jsonl"), str(tmp_path / "run"), steps=0), progress=False)
    assert summary["encoder_pretraining"] is None and "encoder pretraining" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="pretrain.kind='bogus'"):
        train_vqa(_tiny_cfg(str(outside / "qa.jsonl"), str(tmp_path / "bad"), kind="bogus"), progress=False)
    with pytest.raises(ConfigError, match="needs data.format=shapes"):
        train_vqa(_tiny_cfg(str(outside / "qa.jsonl"), str(tmp_path / "regions"), kind="regions"), progress=False)


def test_the_answer_warm_up_keeps_what_the_answers_ignore():
    """The probe's colour term: answers that never depend on brightness still leave each quarter's mean colour
    readable from the encoder (R^2 on unseen images), the cue that flat vs gradient backgrounds need."""
    def images(n: int) -> torch.Tensor:  # 2x2 blocks of random grey levels, plus noise
        blocks = torch.rand(n, 1, 2, 2).repeat(1, 3, 1, 1)
        return F.interpolate(blocks, size=32) * 4 - 2 + 0.1 * torch.randn(n, 3, 32, 32)

    torch.manual_seed(0)
    probe = AnswerProbe(build_encoder(EncoderConfig(width=4)), vocab_size=4, num_answers=2, dim=16)
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    tokens, targets = torch.full((16, 2), 3), F.one_hot(torch.randint(0, 2, (16,)), 2).float()  # answers: noise
    for _ in range(80):
        opt.zero_grad()
        probe({"images": images(16), "tokens": tokens, "targets": targets})[1]["loss"].backward()
        opt.step()
    probe.eval()
    test = images(64)
    with torch.no_grad():
        colour = probe({"images": test, "tokens": tokens[:1].repeat(64, 1), "targets": targets[:1].repeat(64, 1)})
    truth = F.adaptive_avg_pool2d(test, 2)
    assert 1 - colour[1]["colour"] / truth.var() > 0.8
