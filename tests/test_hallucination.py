"""Object hallucination metrics: hand-checked cases, captions true by construction, COCO instances."""

from __future__ import annotations

import json
import random

import pytest

from polymodal.data.shapes import Scene, ShapeObject, describe, sample_scene
from polymodal.errors import DataError
from polymodal.eval.captions import evaluate_results_file
from polymodal.eval.hallucination import (
    CocoVocabulary,
    ObjectTruth,
    SceneObject,
    ShapesVocabulary,
    hallucination_metrics,
    read_coco_objects,
    read_shapes_objects,
)


def shape(name: str, colour: str, size: str = "small") -> SceneObject:
    return SceneObject(name, {"colour": colour, "size": size})


SCENE = [shape("triangle", "blue"), shape("circle", "cyan", "large")]


@pytest.mark.parametrize(("caption", "chair_i", "recall", "exact", "binding"), [
    ("a small blue triangle to the left of a large cyan circle", 0.0, 1.0, 1.0, 1.0),
    # one blue triangle named twice: the second does not exist
    ("three shapes: a small blue triangle, a small blue triangle and a large cyan circle", 1 / 3, 1.0, 0.0, 1.0),
    ("a small white triangle and a large cyan circle", 0.5, 0.5, 0.0, 0.5),  # wrong colour: a triangle it is not
    ("a large blue triangle and a large cyan circle", 0.0, 1.0, 1.0, 0.5),    # wrong size: binding, not existence
    ("a blue triangle", 0.0, 0.5, 0.0, 1.0),                                   # true but incomplete
])
def test_shapes_cases_checked_by_hand(caption, chair_i, recall, exact, binding):
    m = hallucination_metrics({"1": caption}, {"1": SCENE}, ShapesVocabulary())
    assert (m["chair_i"], m["object_recall"], m["exact_objects"], m["binding_accuracy"]) == (chair_i, recall, exact,
                                                                                           binding)
    assert m["chair_s"] == float(chair_i > 0)


def test_count_reads_the_stated_number_else_the_objects_named():
    vocab = ShapesVocabulary()
    truth = {"1": SCENE}
    assert hallucination_metrics({"1": "three shapes: a blue triangle and a cyan circle"}, truth, vocab)[
        "count_accuracy"] == 0.0
    assert hallucination_metrics({"1": "two shapes: a blue triangle and a cyan circle"}, truth, vocab)[
        "count_accuracy"] == 1.0
    assert hallucination_metrics({"1": "a blue triangle"}, truth, vocab)["count_accuracy"] == 0.0
    assert [o.name for o in vocab.mentions("two red stars")] == ["star", "star"]


def test_every_caption_the_grammar_says_is_true_and_a_changed_colour_is_caught():
    """The Shapes World grammar only says true things, so its captions must score perfectly; replacing a
    colour by one absent from the scene must be counted as a hallucination in that caption."""
    rng, vocab = random.Random(0), ShapesVocabulary()
    captions, truth, lies = {}, {}, {}
    for i in range(200):
        scene = sample_scene(rng)
        key = str(i)
        truth[key] = [shape(o.shape, o.colour, o.size) for o in scene.objects]
        captions[key] = describe(scene, rng, k=5)[rng.randrange(5)]
        named = {o.colour for o in scene.objects}
        absent = next(c for c in ("red", "green", "blue", "yellow", "white", "cyan", "magenta", "orange")
                      if c not in named)
        first = next((c for c in named if c in captions[key].split()), None)
        if first is not None:  # "there are three shapes" names no colour to change
            lies[key] = captions[key].replace(first, absent, 1)
    true_scores = hallucination_metrics(captions, truth, vocab)
    assert true_scores["chair_i"] == 0.0 and true_scores["binding_accuracy"] == 1.0
    assert len(lies) > 150 and hallucination_metrics(lies, truth, vocab)["chair_s"] == 1.0


def test_shapes_scene_file_round_trip_and_bad_lines(tmp_path):
    scene = Scene((ShapeObject("star", "red", "large", 0.3, 0.4),), (40, 40, 40))
    path = tmp_path / "scenes.jsonl"
    path.write_text(json.dumps({"image_id": 3, "split": "test", **scene.to_dict()}) + "\n")
    assert read_shapes_objects(tmp_path)["3"] == [shape("star", "red", "large")]
    path.write_text('{"image_id": 3}\n{oops\n')
    with pytest.raises(DataError, match=r"scenes.jsonl:2: not JSON"):
        read_shapes_objects(path)
    path.write_text('{"image_id": 3}\n')
    with pytest.raises(DataError, match=r"scenes.jsonl:1: a scene needs"):
        read_shapes_objects(path)
    with pytest.raises(DataError, match="no scenes file"):
        read_shapes_objects(tmp_path / "missing")


@pytest.fixture()
def coco_instances(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 58, "name": "hot dog"}],
            "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 1},
                            {"image_id": 2, "category_id": 58}]}
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_synonyms_plurals_and_longest_phrase(coco_instances):
    truth = read_coco_objects(coco_instances)
    captions = {"1": "Two women walk their puppies past a cat",   # person, dog: true; cat: hallucinated
                "2": "a man eating hot dogs"}                      # hot dog true (not a dog); person hallucinated
    m = hallucination_metrics(captions, truth, CocoVocabulary())
    assert m["mentions"] == 5 and m["chair_i"] == pytest.approx(2 / 5)
    assert m["chair_s"] == 1.0 and m["object_recall"] == 1.0 and m["exact_objects"] == 0.0
    assert "binding_accuracy" not in m  # no attributes in COCO's instance annotations


def test_results_file_scored_with_instances(coco_instances, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "caption": "a dog and a person"},
                                   {"image_id": 2, "caption": "a hot dog on a plate"}]))
    refs = {"1": ["a man with his dog"], "2": ["a hot dog with mustard"]}
    _, metrics = evaluate_results_file(results, refs, objects=ObjectTruth.coco(coco_instances))
    assert metrics["chair_i"] == 0.0 and metrics["exact_objects"] == 1.0 and metrics["cider"] >= 0


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not a JSON file"),
    ('{"images": []}', "not a COCO instances file"),
    ('{"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1, "category_id": 9}]}',
     r"annotations\[0\]: category_id 9"),
])
def test_bad_instances_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_coco_objects(path)
