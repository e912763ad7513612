"""VQA: the accuracy metric by hand, the question reader, a tiny trained model, inputs, round trips, CLI."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import torch

from polymodal.config import EncoderConfig, TrainConfig
from polymodal.data.qa import QARecord, read_qa
from polymodal.data.records import SkipReport
from polymodal.data.shapes import write_shapes_world
from polymodal.errors import DataError, InputError
from polymodal.eval.vqa_metrics import vqa_accuracy, vqa_report
from polymodal.models.vqa import QuestionEncoderConfig, VQAModel, VQAModelConfig
from polymodal.nn.fusion.base import FusionConfig
from polymodal.text.answers import answer_scores, normalize_answer
from polymodal.train.vqa import (
    PretrainConfig,
    QADataConfig,
    VQAExperimentConfig,
    evaluate_vqa,
    prepare_vqa,
    qa_dataset,
    train_vqa,
)

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- metric
def test_vqa_accuracy_by_hand():
    ten = ["red"] * 2 + ["blue"] * 7 + ["green"]
    assert vqa_accuracy("red", ten) == pytest.approx(2 / 3)        # 2 of 10 annotators: 2/3
    assert vqa_accuracy("blue", ten) == 1.0                          # 3 or more: full credit
    assert vqa_accuracy("green", ten) == pytest.approx(1 / 3)
    assert vqa_accuracy("purple", ten) == 0.0
    # official: mean over the 10 leave-one-out subsets; red: 2 subsets see 1 red, 8 see 2 -> (2/3 + 16/3) / 10
    assert vqa_accuracy("red", ten, official=True) == pytest.approx(0.6)
    # 3 "blue" of 10: the 3 subsets that drop a blue keep 2 -> (7 * 1 + 3 * 2/3) / 10
    assert vqa_accuracy("blue", ["blue"] * 3 + ["x"] * 7, official=True) == pytest.approx(0.9)
    assert vqa_accuracy("Two.", ["2"]) == 1.0 and vqa_accuracy("a circle", ["circle"]) == 1.0  # normalised
    assert vqa_accuracy("red", ["red", "blue"]) == 0.5               # 2 references: threshold 2
    assert normalize_answer("The  Blue,  square!") == "blue square"
    assert answer_scores(["yes"] * 4 + ["no"]) == {"yes": 1.0, "no": pytest.approx(1 / 3)}
    report = vqa_report(["red", "3", "no"], [["red"], ["three"], ["yes"]], ["colour", "count", "yes/no"])
    assert report == {"accuracy": pytest.approx(2 / 3), "questions": 3, "accuracy/colour": 1.0,
                      "accuracy/count": 1.0, "accuracy/yes/no": 0.0}
    with pytest.raises(ValueError):
        vqa_accuracy("red", [])


# ----------------------------------------------------------------------------- reader
@pytest.fixture
def image_dir(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / name)
    return tmp_path


def test_reader_skips_and_counts_bad_records(image_dir):
    lines = [
        json.dumps({"image": "a.png", "question": "what colour?", "answer": "red", "type": "colour"}),
        json.dumps({"image": "b.png", "question": "how many?", "answers": [{"answer": "two"}, {"answer": "2"},
                                                                              {"answer": "three"}]}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"image": "a.png", "question": "   ", "answer": "x"}),
        json.dumps({"image": "a.png", "question": "no answer?"}),
        json.dumps({"image": "missing.png", "question": "where?", "answer": "here"}),
        json.dumps({"image": "a.png", "question": "empty answers?", "answers": []}),
        "",
    ]
    (image_dir / "qa.jsonl").write_text("\n".join(lines), encoding="utf-8")
    report = SkipReport(source="qa")
    records = read_qa(image_dir / "qa.jsonl", report=report)
    assert [r.answers for r in records] == [["red"], ["two", "2", "three"]]
    assert records[0].type == "colour" and records[0].image == str((image_dir / "a.png").resolve())
    assert report.count == 6
    assert report.reasons["invalid JSON"] == 1 and report.reasons["image file not found"] == 1
    assert any("line 3" in e for e in report.examples)


def test_reader_json_layouts_and_bad_files(image_dir):
    rows = [{"image": "a.png", "question": "q1?", "answer": "yes", "split": "train"},
            {"image": "b.png", "question": "q2?", "answer": "no", "split": "test"}]
    (image_dir / "list.json").write_text(json.dumps(rows))
    (image_dir / "wrapped.json").write_text(json.dumps({"questions": rows}))
    assert [r.question for r in read_qa(image_dir / "list.json", split="test")] == ["q2?"]
    assert len(read_qa(image_dir / "wrapped.json")) == 2
    (image_dir / "broken.json").write_text('[{"image": "a.png",')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(line 1"):
        read_qa(image_dir / "broken.json")
    with pytest.raises(DataError, match="not found"):
        read_qa(image_dir / "nope.jsonl")
    (image_dir / "odd.json").write_text(json.dumps({"rows": rows}))
    with pytest.raises(DataError, match="odd.json: a JSON object without a 'questions' array"):
        read_qa(image_dir / "odd.json")
    (image_dir / "bad.jsonl").write_text('{"image": "a.png"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match="no usable question records.*missing"):
        read_qa(image_dir / "bad.jsonl")
    (image_dir / "latin1.jsonl").write_bytes('{"question": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_qa(image_dir / "latin1.jsonl")


# ----------------------------------------------------------------------------- a tiny trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    world = write_shapes_world(root / "shapes", n=200, image_size=32, progress=False)
    cfg = VQAExperimentConfig(
        model=VQAModelConfig(encoder=EncoderConfig(name="small_cnn", width=16, freeze=True), image_size=32, dim=32,
                             question=QuestionEncoderConfig(embed_dim=16, hidden_dim=32, max_len=12),
                             fusion=FusionConfig(name="film", dim=32, hidden=64, dropout=0.0), dropout=0.0),
        data=QADataConfig(path=str(world), n=200, render_size=32),
        pretrain=PretrainConfig(steps=60, batch_size=32),  # a few steps of scene attributes: usable regions
        train=TrainConfig(out_dir=str(root / "run"), steps=250, batch_size=64, lr=5e-3, warmup_steps=10,
                          eval_every=0, checkpoint_every=0, log_every=1000))
    summary = train_vqa(cfg, progress=False)
    model = VQAModel.from_pretrained(root / "run" / "model")
    return {"cfg": cfg, "summary": summary, "model": model, "world": world, "root": root}


def test_tiny_vqa_beats_the_question_only_baseline(trained):
    model, cfg = trained["model"], trained["cfg"]
    _, data = prepare_vqa(cfg, progress=False)
    train = data.splits["train"]
    # the best any question-only model can do on these questions: the majority answer per question text
    by_question: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        by_question[r.question][r.answers[0]] += 1
    question_only = sum(c.most_common(1)[0][1] for c in by_question.values()) / len(train)
    count_only = by_question["how many shapes are there?"].most_common(1)[0][1] / sum(
        by_question["how many shapes are there?"].values())
    seen = evaluate_vqa(model, qa_dataset(model, data, "train"))
    blank = torch.zeros_like(data.bank[0])
    blanked = evaluate_vqa(model, qa_dataset(model, data, "train", bank=lambda i: blank))["accuracy"]
    assert seen["accuracy"] > question_only, (seen, question_only)
    assert seen["accuracy/count"] > count_only + 0.3  # one question text, answers that only the image tells
    assert blanked < seen["accuracy"] - 0.1
    assert set(trained["summary"]["test"]) >= {"accuracy", "accuracy/colour", "accuracy/count", "questions"}
    assert json.loads((trained["root"] / "run" / "metrics.json").read_text())["heldout"]["questions"] > 0


def test_save_load_round_trip_gives_identical_answers(trained, tmp_path):
    import polymodal

    model = trained["model"]
    images = sorted((trained["world"] / "images" / "test").glob("*.png"))[:4]
    questions = ["what colour is the circle?", "how many shapes are there?", "is there a red star?",
                 "what shape is the blue object?"]
    model.save_pretrained(tmp_path / "m")
    loaded = polymodal.load(tmp_path / "m")
    assert isinstance(loaded, VQAModel) and loaded.answers == model.answers
    assert loaded.answer(images, questions) == model.answer(images, questions)
    assert torch.equal(loaded.predict(images, questions), model.predict(images, questions))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "vqa" and config["answers"] == model.answers


def test_bad_questions_are_handled_clearly(trained):
    model = trained["model"]
    image = sorted((trained["world"] / "images" / "test").glob("*.png"))[0]
    for bad in ("", "   \n", "?!?"):
        with pytest.raises(InputError, match="empty question|no words"):
            model.answer(image, bad)
    with pytest.raises(InputError, match="must be text"):
        model.answer(image, [None])
    long = "how many shapes are there? " * 1500  # ~40k characters
    assert len(long) > 10_000
    assert model.answer(image, long) == model.answer(image, " ".join(long.split()[: model.cfg.question.max_len]))
    unknown = "what colour is the zorblax?"
    ids = model.tokenizer.encode(unknown)
    assert ids[-1] == model.tokenizer.unk_id
    assert model.answer(image, unknown)[0] in model.answers
    with pytest.raises(InputError, match="2 images but 3 questions"):
        model.answer([image, image], ["a?", "b?", "c?"])
    top = model.answer_topk(image, "how many shapes are there?", k=3)[0]
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and sum(p for _, p in top) <= 1.0 + 1e-6


def test_cli_vqa(trained, monkeypatch, capsys):
    run_dir = trained["root"] / "run"
    image = str(sorted((trained["world"] / "images" / "test").glob("*.png"))[0])
    code, out, _ = polymodal_cli(monkeypatch, capsys, "vqa", str(run_dir), image, "how many shapes are there?")
    assert code == 0 and out.strip() == trained["model"].answer(image, "how many shapes are there?")[0]
    code, out, _ = polymodal_cli(monkeypatch, capsys, "vqa", str(run_dir), image, "how many shapes are there?", "--top")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and all(float(line.split("\t")[1]) <= 1 for line in lines)
    code, _, err = polymodal_cli(monkeypatch, capsys, "vqa", str(run_dir), image, "  ")
    assert code == 2 and err.strip().startswith("error: empty question") and len(err.strip().splitlines()) == 1
    code, _, err = polymodal_cli(monkeypatch, capsys, "ablate", "everything")
    assert code == 2 and "the available ablation is 'fusion'" in err


def test_question_records_keep_types_and_splits(trained):
    records = read_qa(trained["world"] / "qa.jsonl", split="heldout")
    assert records and all(isinstance(r, QARecord) and r.split == "heldout" for r in records)
    assert {r.type for r in records} == {"colour", "shape", "count", "position", "yes/no"}


def test_objects_are_the_regions_the_pretrained_centre_head_picks(trained):
    """model.objects=k: the fusion sees the k regions most likely to hold an object's centre, as scored by the
    region pretraining's own centre classifier (saved beside the encoder), frozen with the encoder."""
    import dataclasses

    from polymodal.checkpoint import read_safetensors
    from polymodal.data.qa import collate_qa
    from polymodal.train.pretraining import HEADS_FILE

    cfg = dataclasses.replace(trained["cfg"], model=dataclasses.replace(trained["cfg"].model, objects=3))
    model, data = prepare_vqa(cfg, progress=False)
    heads = read_safetensors(model.cfg.encoder.pretrained.replace("encoder.safetensors", HEADS_FILE))
    assert torch.equal(model.objectness.weight, heads["weight"][-2:]) and not model.objectness.weight.requires_grad
    batch = collate_qa([qa_dataset(model, data, "train", train=True)[i] for i in range(8)])
    batch.pop("index", None)
    regions = batch["image_features"] if "image_features" in batch else model.encoder(batch["images"])
    assert model.image_tokens(regions).shape == (8, 3, model.cfg.dim)  # which 3: test_object_tokens_by_hand
    logits, losses = model(batch)
    losses["loss"].backward()
    assert model.object_embed.grad is not None and logits.shape == (8, len(model.answers))
    with pytest.raises(Exception, match="does not work with fusion 'relation'"):
        VQAModel(dataclasses.replace(cfg.model, fusion=FusionConfig(name="relation")), model.tokenizer, model.answers)


def test_object_tokens_by_hand():
    """objects=2 on 4 regions with a hand-set centre head: the tokens are the 2 regions with the highest
    centre probability, most likely first, each plus its probability times the object embedding."""
    import math

    from torch import nn

    from polymodal.nn.encoders import build_encoder
    from polymodal.text.tokenizer import SPECIALS, WordTokenizer

    encoder = EncoderConfig(name="small_cnn", width=8)
    c = build_encoder(encoder).out_dim
    model = VQAModel(VQAModelConfig(encoder=encoder, image_size=32, dim=c, objects=2,
                                    question=QuestionEncoderConfig(embed_dim=8, hidden_dim=16, max_len=8),
                                    fusion=FusionConfig(name="film", dim=c, hidden=16)),
                     WordTokenizer([*SPECIALS, "red"]), ["red", "blue"])
    model.image_proj = nn.Identity()  # the projection has its own tests; here only the choice and the score
    regions = torch.arange(4 * c, dtype=torch.float32).reshape(1, 4, c) / (4 * c)  # 4 distinct regions
    regions[0, :, 0] = torch.tensor([0.0, 1.0, -1.0, 2.0])  # the centre logit of each region
    with torch.no_grad():  # logits [no centre, centre] = [0, feature 0]: P(centre) = sigmoid(feature 0)
        model.objectness.weight.zero_()
        model.objectness.bias.zero_()
        model.objectness.weight[1, 0] = 1.0
        model.object_embed.fill_(10.0)
        tokens = model.image_tokens(regions)
    p3, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))  # regions 3 then 1: not in index order
    expected = torch.stack([regions[0, 3] + 10.0 * p3, regions[0, 1] + 10.0 * p1])[None]
    torch.testing.assert_close(tokens, expected)
