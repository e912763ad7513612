"""Evaluation: a tiny captioner over a few PNGs (one broken), results files, the `evaluate` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from polymodal.data.records import CaptionRecord
from polymodal.eval.caption_metrics import METRICS, load_references, load_results
from polymodal.eval.captions import evaluate_captioner, evaluate_results_file, write_coco_results
from polymodal.generate import GenerationConfig

from .conftest import tiny_model

COLOURS = {"1": "red", "2": "blue", "3": "green"}


def _coco_dir(root: Path, broken: bool = True) -> Path:
    """root/captions.json (COCO, split "test") over three tiny PNGs and, optionally, one broken file."""
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for key, colour in COLOURS.items():
        Image.new("RGB", (24, 24), colour).save(root / f"{key}.png")
        images.append({"id": int(key), "file_name": f"{key}.png", "split": "test"})
        annotations += [{"image_id": int(key), "caption": f"a {colour} square"},
                        {"image_id": int(key), "caption": f"a {colour} circle"}]
    if broken:
        (root / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        images.append({"id": 4, "file_name": "4.png", "split": "test"})
        annotations.append({"image_id": 4, "caption": "a broken image"})
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polymodal", *args], capture_output=True, text=True, timeout=300)


def test_evaluate_captioner_skips_and_counts_bad_images(tmp_path):
    _coco_dir(tmp_path)
    records = [CaptionRecord(k, str(tmp_path / f"{k}.png"), [f"a {COLOURS.get(k, 'x')} square"])
               for k in ["1", "2", "3", "4"]]
    model = tiny_model().train()
    results, metrics = evaluate_captioner(model, records, GenerationConfig(strategy="greedy", max_len=6),
                                          batch_size=2, progress=False, cider_only=True)
    assert sorted(results) == ["1", "2", "3"]
    assert all(isinstance(c, str) and c for c in results.values())
    assert metrics["skipped_images"] == 1 and metrics["images"] == 3
    assert metrics["cider"] >= 0
    assert model.training  # the caller's mode is restored
    # The same greedy captions as captioning one image at a time.
    model.eval()
    assert results["2"] == model.caption([records[1].image], strategy="greedy", max_len=6)[0]


def test_coco_results_round_trip_keeps_id_types(tmp_path):
    results = {"42": "a red circle", "007": "a blue square", "img_3": "a star"}
    path = write_coco_results(tmp_path / "eval" / "results_test.json", results)
    data = json.loads(path.read_text())
    assert [e["image_id"] for e in data] == [42, "007", "img_3"]
    assert load_results(path) == results


def test_evaluate_results_file_scores_against_references(tmp_path):
    references = _coco_dir(tmp_path, broken=False)
    results = write_coco_results(tmp_path / "results_test.json", {"1": "a red square", "2": "a blue circle"})
    as_dict = {k: [f"a {c} square", f"a {c} circle"] for k, c in COLOURS.items()}
    _, metrics = evaluate_results_file(results, as_dict)
    assert metrics["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["images"] == 2 and metrics["reference_images"] == 3
    assert load_references(references) == as_dict  # the file route reads the same references


def test_cli_scores_a_results_file_and_reports_a_bad_one_in_one_line(tmp_path):
    references = _coco_dir(tmp_path, broken=False)
    results = write_coco_results(tmp_path / "results_val.json", {"1": "a red square", "3": "a green thing"})
    run = _cli("evaluate", "--results", str(results), "--references", str(references))
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics_val.json").read_text())
    assert set(METRICS) <= set(metrics) and metrics["images"] == 2
    assert "cider" in run.stdout and "rouge_l" in run.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 99, "caption": "b"}]))
    run = _cli("evaluate", "--results", str(bad), "--references", str(references))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "entry 1" in lines[0]

    run = _cli("evaluate", "--results", str(tmp_path / "missing.json"), "--references", str(references))
    assert run.returncode == 2 and "not found" in run.stderr and "Traceback" not in run.stderr


def test_cli_evaluates_a_model_on_a_coco_split(tmp_path):
    annotations = _coco_dir(tmp_path / "data")
    model_dir = tiny_model().save_pretrained(tmp_path / "model")
    run = _cli("evaluate", str(model_dir), "--data", str(annotations), "--format", "coco", "--split", "test",
               "--beam", "2", "--quiet")
    assert run.returncode == 0, run.stderr
    out = model_dir / "eval"
    results = json.loads((out / "results_test.json").read_text())
    assert sorted(e["image_id"] for e in results) == [1, 2, 3]  # numeric ids written as ints
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert metrics["skipped_images"] == 1 and set(METRICS) <= set(metrics)
    assert "skipped_images" in run.stdout


def test_cli_without_model_or_results_is_a_one_line_error():
    run = _cli("evaluate")
    assert run.returncode == 2 and "nothing to evaluate" in run.stderr and "Traceback" not in run.stderr


def test_cli_scores_whether_named_objects_exist(tmp_path):
    """--instances (COCO) adds CHAIR; a Shapes World folder is scored from its scenes with no option."""
    references = _coco_dir(tmp_path, broken=False)
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}],
                                     "annotations": [{"image_id": 1, "category_id": 18},
                                                     {"image_id": 3, "category_id": 17}]}))
    results = write_coco_results(tmp_path / "results_val.json", {"1": "a dog on a red square", "3": "two dogs"})
    run = _cli("evaluate", "--results", str(results), "--references", str(references), "--instances", str(instances))
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics_val.json").read_text())
    assert metrics["chair_i"] == 0.5 and metrics["chair_s"] == 0.5 and "chair_i" in run.stdout

    from polymodal.data.shapes import write_shapes_world

    world = write_shapes_world(tmp_path / "world", n=30, seed=0, image_size=32, progress=False)
    truth = {str(json.loads(line)["image_id"]): json.loads(line)
             for line in (world / "scenes.jsonl").read_text().splitlines()}
    key = next(iter(truth))
    obj = truth[key]["objects"][0]
    true_caption = f"a {obj['size']} {obj['colour']} {obj['shape']}"
    results = write_coco_results(tmp_path / "shapes" / "results_all.json", {key: true_caption})
    run = _cli("evaluate", "--results", str(results), "--references", str(world / "captions.json"))
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "shapes" / "metrics_all.json").read_text())
    assert metrics["chair_i"] == 0.0 and metrics["binding_accuracy"] == 1.0
    assert metrics["object_recall"] == pytest.approx(1 / len(truth[key]["objects"]))
