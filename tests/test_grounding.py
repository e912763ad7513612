"""Where the model found each named object: markers from the attention of the bundled captioner."""

from __future__ import annotations

import io
import random

import torch
from fastapi.testclient import TestClient

import polymodal
from polymodal.assets import bundled_model_dir
from polymodal.data.shapes import render, sample_scene
from polymodal.eval.grounding import locate_objects, vocabulary_for
from polymodal.eval.hallucination import CocoVocabulary, ShapesVocabulary
from polymodal.serve import create_app


def test_markers_follow_the_attention_peak_of_each_noun():
    words = "two shapes : a dog beside a hot dog".split()
    attention = torch.zeros(len(words), 9)  # 3 x 3 regions
    attention[4, 2] = 1.0  # "dog" -> top right
    attention[8, 6] = 1.0  # "hot dog"'s noun -> bottom left
    marks = locate_objects(words, attention, CocoVocabulary())
    assert [(m["phrase"], m["start"], m["end"]) for m in marks] == [("dog", 4, 5), ("hot dog", 7, 9)]
    assert [(round(m["x"], 3), round(m["y"], 3)) for m in marks] == [(0.833, 0.167), (0.167, 0.833)]
    assert locate_objects(words, torch.zeros(len(words), 5), CocoVocabulary()) == []  # no square grid
    assert isinstance(vocabulary_for(["a", "dog", "cat"]), CocoVocabulary)


def test_the_page_api_marks_true_objects_where_they_are():
    """On Shapes World scenes, each named object that exists gets a marker on it (within about one region)."""
    model = polymodal.load(bundled_model_dir())
    assert isinstance(vocabulary_for(model.tokenizer.words), ShapesVocabulary)
    rng, near, true_marks = random.Random(5), 0, 0
    with TestClient(create_app({"bundled": model})) as client:
        for _ in range(8):
            scene = sample_scene(rng, min_objects=1, max_objects=2)
            buf = io.BytesIO()
            render(scene, size=128).save(buf, format="PNG")
            body = client.post("/v1/caption", files={"image": ("s.png", buf.getvalue(), "image/png")},
                               data={"heatmaps": "true", "beam_size": "3"}).json()
            for mark in body["objects"]:
                assert 0 <= mark["x"] <= 1 and 0 <= mark["y"] <= 1
                assert " ".join(body["words"][mark["start"]: mark["end"]]) == mark["phrase"]
                colour, shape = mark["phrase"].split()[-2:]
                same = [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]
                if same:
                    true_marks += 1
                    near += min(((o.x - mark["x"]) ** 2 + (o.y - mark["y"]) ** 2) ** 0.5 for o in same) < 0.2
    assert true_marks >= 6 and near / true_marks >= 0.8, (near, true_marks)
