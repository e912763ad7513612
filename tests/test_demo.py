"""The main job and the bundled model: real captions, real metrics, heatmaps, a report."""

from __future__ import annotations

import json

import pytest

from polymodal.assets import bundled_model_dir


@pytest.fixture(scope="module")
def bundled():
    import polymodal

    return polymodal.load(bundled_model_dir())


def test_bundled_model_captions_test_images_correctly_most_of_the_time(bundled):
    from polymodal.config import DataConfig
    from polymodal.data.datasets import load_split
    records = load_split(DataConfig(format="shapes", n=400, seed=7), "test")  # unseen seed: fresh scenes
    captions = bundled.caption([r.image for r in records], beam_size=3)
    # Correct = the caption names exactly the image's objects (colour + shape pairs), in any order.
    correct = sum(_objects(caption) == _objects(rec.captions[0]) for rec, caption in zip(records, captions,
                                                                                         strict=True))
    assert correct / len(records) > 0.5, (correct, len(records))


COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"}
SHAPES = {"circle", "square", "triangle", "diamond", "star", "hexagon"}


def _objects(caption: str) -> list[tuple[str, str]]:
    from polymodal.text.tokenizer import split_words

    pairs, colour = [], None
    for word in split_words(caption):
        if word in COLOURS:
            colour = word
        elif word in SHAPES and colour:
            pairs.append((colour, word))
            colour = None
    return sorted(pairs)


def test_demo_writes_report_metrics_and_heatmaps(tmp_path):
    import re

    from polymodal.cli.demo import SAMPLES, run_demo

    report = run_demo(tmp_path / "demo", n=100)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics) == {"test", "heldout"}
    assert metrics["test"]["cider"] > 1.0 and metrics["test"]["bleu4"] > 0.2
    assert report.exists() and "CIDEr-D" in report.read_text() and "CHAIR-i" in report.read_text()
    assert 0 <= metrics["test"]["chair_i"] < metrics["heldout"]["chair_i"]  # held-out compositions: more invented
    grids = list((tmp_path / "demo" / "heatmaps").glob("*/grid.png"))
    assert len(grids) == 3
    # The report can be moved or shared: every picture sits beside it, linked by a relative path.
    moved = (tmp_path / "demo").rename(tmp_path / "shared")
    text = (moved / report.name).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len([link for link in links if link.startswith("images/")]) == SAMPLES
    assert len([link for link in links if link.startswith("heatmaps/")]) == 3
    assert len([link for link in links if link.startswith("drawings/")]) == 2  # the bundled generator's, captioned
    assert "## Drawn from text" in text and text.count("captions: ") == 2
    # The bundled assistant's conversation: every question answered, the joke declined as out of its scope.
    from polymodal.cli.demo import CONVERSATION

    said = text.split("## A conversation")[1].split("##")[0]
    assert all(f"*{q}*" in said for q in CONVERSATION) and "*tell me a joke* **i can only answer" in said
    for link in links:
        assert not link.startswith(("/", "\\")) and ":" not in link, link
        assert (moved / link).is_file(), link
    assert str(tmp_path) not in text and str(bundled_model_dir()) not in text
    assert not re.search(r"(^|[\s(`])/[A-Za-z]", text), text  # no absolute path anywhere in the report
