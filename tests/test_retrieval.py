"""Retrieval: Recall@K against a hand-computed case, indexes (round trip, bad images, model check),
zero-shot classification, paraphrases and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from polymodal.data.images import denormalize
from polymodal.data.shapes import COLOURS, write_shapes_world
from polymodal.errors import DataError, InputError
from polymodal.eval.caption_metrics import retrieval_metrics
from polymodal.eval.retrieval import (
    RetrievalIndex,
    build_image_index,
    build_text_index,
)
from polymodal.eval.retrieval_scores import hard_negative_accuracy, paraphrase
from polymodal.eval.zero_shot import (
    fill_template,
    single_object_images,
    zero_shot_accuracy,
    zero_shot_classifier,
)

from .test_dual_encoder import tiny_dual

pytestmark = pytest.mark.usefixtures("one_thread")

# 3 images, 5 texts: texts 0, 1 describe image 0, text 2 image 1, texts 3, 4 image 2.
SIM = [[0.9, 0.1, 0.8, 0.3, 0.2],
       [0.7, 0.6, 0.5, 0.4, 0.1],
       [0.2, 0.9, 0.3, 0.1, 0.05]]
OWNER = [0, 0, 1, 2, 2]


def test_recall_matches_a_hand_computed_case():
    m = retrieval_metrics(SIM, OWNER, ks=(1, 2, 5))
    # i->t ranks: image 0 -> 1 (text 0 first), image 1 -> 3 (texts 0, 1 above text 2), image 2 -> 4
    assert m["i2t_r1"] == pytest.approx(100 / 3) and m["i2t_r2"] == pytest.approx(100 / 3)
    assert m["i2t_r5"] == 100.0
    assert m["i2t_median_rank"] == 3.0 and m["i2t_mean_rank"] == pytest.approx(8 / 3)
    # t->i ranks: 1, 3, 2, 3, 3
    assert m["t2i_r1"] == pytest.approx(20.0) and m["t2i_r2"] == pytest.approx(40.0) and m["t2i_r5"] == 100.0
    assert m["t2i_median_rank"] == 3.0 and m["t2i_mean_rank"] == pytest.approx(2.4)
    assert m["r1_mean"] == pytest.approx((100 / 3 + 20) / 2) and (m["images"], m["texts"]) == (3, 5)


def test_ties_count_against_the_query_unless_texts_are_interchangeable():
    tied = [[0.5, 0.5], [0.5, 0.5]]  # two images with the same caption "a red circle"
    assert retrieval_metrics(tied, [0, 1], ks=(1,))["t2i_r1"] == 0.0
    same = retrieval_metrics(tied, [0, 1], ks=(1,), text_keys=["a red circle", "a red circle"])
    assert same["t2i_r1"] == 100.0 and same["i2t_r1"] == 100.0
    with pytest.raises(DataError, match="text_image"):
        retrieval_metrics(SIM, [0, 1], ks=(1,))


def test_relevance_matrix_counts_any_true_caption():
    own = [[i == o for o in OWNER] for i in range(3)]
    assert retrieval_metrics(SIM, OWNER, relevance=own) == retrieval_metrics(SIM, OWNER)
    wider = [row[:] for row in own]
    wider[1][0] = True  # text 0 also describes image 1: image 1's best caption is now ranked first
    m = retrieval_metrics(SIM, OWNER, ks=(1,), relevance=wider)
    assert m["i2t_r1"] == pytest.approx(200 / 3) and m["t2i_r1"] == pytest.approx(20.0)
    with pytest.raises(DataError, match="own image"):
        retrieval_metrics(SIM, OWNER, relevance=[[False] * 5] * 3)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from polymodal.data.shapes import ShapesWorld

    folder = tmp_path_factory.mktemp("imgs")
    world = ShapesWorld(n=20, seed=1, image_size=32)
    for i in range(6):
        world.image("train", i).save(folder / f"img{i}.png")
    (folder / "sub").mkdir()
    world.image("train", 6).save(folder / "sub" / "img6.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_index_round_trip_skips_bad_images_and_finds_itself(image_folder, tmp_path):
    model = tiny_dual().eval()
    index, report = build_image_index(model, image_folder, batch_size=3, progress=False)
    assert len(index.items) == 7 and report.count == 1 and "broken.png" in report.examples[0]
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["embeddings.safetensors", "index.json"]
    loaded = RetrievalIndex.load(tmp_path / "idx")
    assert torch.equal(loaded.embeddings, index.embeddings) and loaded.items == index.items
    assert loaded.kind == "image" and loaded.fingerprint == index.fingerprint
    loaded.check_model(model)  # same model: accepted
    assert len(loaded.search(model.embed_texts(["a red circle"]), k=10)[0]) == 7  # k capped at the size


def test_a_self_contained_index_carries_its_images_and_moves(image_folder, tmp_path):
    model = tiny_dual().eval()
    model.save_pretrained(tmp_path / "model")
    index, _ = build_image_index(model, image_folder, progress=False, model_dir=tmp_path / "model")
    index.save(tmp_path / "idx", copy_images=True)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert all(not Path(item).is_absolute() for item in meta["items"]) and meta["model"]["dir"] == "../model"
    assert (tmp_path / "idx" / "images" / "sub" / "img6.jpg").is_file()  # the indexed folder's layout is kept
    (tmp_path / "moved").mkdir()
    for name in ("idx", "model"):  # move the index and its model together: still works
        (tmp_path / name).rename(tmp_path / "moved" / name)
    loaded = RetrievalIndex.load(tmp_path / "moved" / "idx")
    assert all(Path(item).is_file() for item in loaded.items)
    assert Path(loaded.info["model"]["dir"]) == (tmp_path / "moved" / "model").resolve()
    assert torch.equal(loaded.embeddings, index.embeddings)


def test_search_is_exact_cosine_top_k():
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=-1)
    index = RetrievalIndex(emb, ["a", "b", "c", "d"], "image", "f" * 64)
    hits = index.search(torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8]]), k=2)
    assert [[item for item, _ in h] for h in hits] == [["a", "b"], ["d", "c"]]
    assert hits[0][1][1] == pytest.approx(0.8) and hits[1][0][1] == pytest.approx(0.8)
    with pytest.raises(InputError, match="width"):
        index.search(torch.ones(1, 4))


def test_an_index_refuses_a_different_model(image_folder, tmp_path):
    index, _ = build_image_index(tiny_dual(seed=0).eval(), image_folder, progress=False, model_dir="runs/a")
    with pytest.raises(InputError, match="fingerprint .* query with the model that built the index"):
        index.check_model(tiny_dual(seed=1))
    with pytest.raises(InputError, match="not a retrieval index"):
        RetrievalIndex.load(tmp_path)


def test_text_index_ranks_captions_for_an_image():
    model = tiny_dual().eval()
    captions = ["a red circle", "a blue square", "a red circle", "two shapes: a green star and a circle"]
    index = build_text_index(model, list(dict.fromkeys(captions)))
    assert index.kind == "text" and len(index.items) == 3
    top = index.search(model.embed_texts(["a blue square"]), k=2)[0]
    assert top[0] == ("a blue square", pytest.approx(1.0, abs=1e-5))


def test_zero_shot_matrix_is_templates_times_classes():
    seen = []

    def embed(texts: list[str]) -> torch.Tensor:
        seen.extend(texts)
        return torch.nn.functional.normalize(torch.randn(len(texts), 5), dim=-1)

    weights = zero_shot_classifier(embed, ["circle", "square", "orange"], ["a {}", "a big {}"])
    assert weights.shape == (5, 3)
    assert torch.allclose(weights.norm(dim=0), torch.ones(3))
    assert seen == ["a circle", "a big circle", "a square", "a big square", "an orange", "a big orange"]
    assert fill_template("a {} star", "orange") == "an orange star"


class ColourOracle(nn.Module):
    """A hand-built 'dual encoder' over 8 colour axes: images by their brightest pixels' colour, texts
    by the colour word they contain. Zero-shot with it must be (almost) perfect."""

    architecture = "oracle"

    def __init__(self):
        super().__init__()
        self.cfg = type("Cfg", (), {"image_size": 32, "embed_dim": len(COLOURS)})()
        self.anchor = nn.Parameter(torch.tensor([list(rgb) for rgb in COLOURS.values()], dtype=torch.float) / 255)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        rgb = denormalize(images).flatten(2)  # (B, 3, HW)
        bright = (rgb.max(1).values > 0.45).float().unsqueeze(1)  # objects are bright, backgrounds dark
        mean = (rgb * bright).sum(-1) / bright.sum(-1).clamp_min(1)  # (B, 3)
        nearest = torch.cdist(mean, self.anchor).argmin(-1)
        return torch.nn.functional.one_hot(nearest, len(COLOURS)).float()

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        names = list(COLOURS)
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(next(i for i, c in enumerate(names)
                                                                         if c in t.split())), len(names)).float()
                            for t in texts])


def test_a_hand_built_model_classifies_colours_zero_shot(tmp_path):
    root = write_shapes_world(tmp_path / "sw", n=60, seed=2, image_size=32, progress=False)
    items = single_object_images(root, "train")
    assert items and all(set(label) == {"shape", "colour", "size"} for _, label in items)
    result = zero_shot_accuracy(ColourOracle(), root, "colour", split="train")
    assert result["images"] == len(items) and result["chance"] == 1 / 8
    assert result["accuracy"] >= 0.9, result
    with pytest.raises(InputError, match="shape or colour"):
        zero_shot_accuracy(ColourOracle(), root, "size")


def test_hard_negative_captions_score_what_a_model_can_tell_apart(tmp_path):
    from polymodal.data.shapes import ShapesWorld
    from polymodal.text.perturb import CaptionPerturber

    root = write_shapes_world(tmp_path / "sw", n=60, seed=2, image_size=32, progress=False)
    world = ShapesWorld(n=60, seed=2, image_size=32)
    records = [r for i, r in enumerate(world.records("train", root)) if len(world.scene("train", i).objects) == 1]
    assert records
    colours = CaptionPerturber([list(COLOURS)])
    result = hard_negative_accuracy(ColourOracle(), records, colours)
    # one object, one colour word: nothing to swap; a replaced colour is told apart by the colour oracle
    assert "swap" not in result and result["replace_pairs"] == sum(len(r.captions) for r in records)
    assert result["replace"] >= 90.0, result
    shapes = hard_negative_accuracy(ColourOracle(), records, CaptionPerturber([["circle", "square", "star"]]))
    assert shapes.get("replace", 0.0) <= 10.0  # blind to shape words: a tie is not a win


def test_paraphrase_uses_words_shapes_world_never_says():
    assert paraphrase("a small red circle above an orange square") == "a tiny crimson disc over an amber box"
    model = tiny_dual()
    unk = model.tokenizer.unk_id
    assert set(model.tokenize(["crimson cobalt pentagram"])[0].tolist()) == {unk}


def test_cli_index_and_retrieve(image_folder, tmp_path):
    from polymodal.cli import app

    model_dir = tmp_path / "model"
    tiny_dual().save_pretrained(model_dir)
    runner = CliRunner()
    built = runner.invoke(app, ["index", str(model_dir), str(image_folder), "--out", str(tmp_path / "idx"),
                                "--quiet"])
    assert built.exit_code == 0, built.output
    assert "indexed 7 images" in built.output and "skipped 1" in built.output
    found = runner.invoke(app, ["retrieve", str(tmp_path / "idx"), "a red circle", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    rows = json.loads(found.output)
    assert len(rows) == 3 and all(r["item"].endswith((".png", ".jpg")) for r in rows)
    by_image = runner.invoke(app, ["retrieve", str(tmp_path / "idx"), "--image", rows[0]["item"], "-k", "1"])
    assert by_image.exit_code == 0 and by_image.output.split()[1] == "+1.000"  # the image itself (or a twin)


def test_cli_refuses_another_model_with_one_line(tmp_path):
    tiny_dual(seed=0).save_pretrained(tmp_path / "a")
    tiny_dual(seed=1).save_pretrained(tmp_path / "b")
    build_text_index(tiny_dual(seed=0), ["a red circle", "a blue square"], model_dir=tmp_path / "a").save(
        tmp_path / "idx")
    result = subprocess.run([sys.executable, "-m", "polymodal", "retrieve", str(tmp_path / "idx"), "a red circle",
                             "--model", str(tmp_path / "b")], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "fingerprint" in lines[0] and str(tmp_path / "a") in lines[0]
