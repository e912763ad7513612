"""The `polymodal` command: real subprocesses, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import tiny_model


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "polymodal", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "m"
    tiny_model().save_pretrained(folder)
    return folder


def test_data_shapes_writes_coco_and_qa(tmp_path):
    result = run("data", "shapes", "--out", str(tmp_path / "sw"), "--n", "30", "--seed", "1", "--size", "32")
    assert result.returncode == 0, result.stderr
    coco = json.loads((tmp_path / "sw" / "captions.json").read_text())
    assert len(coco["images"]) == 33 and len(coco["annotations"]) >= 33
    assert (tmp_path / "sw" / "qa.jsonl").read_text().count("\n") > 30


def test_caption_json_output(tmp_path, model_dir):
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    result = run("caption", str(model_dir), str(tmp_path / "red.png"), "--json", "--beam", "3", "--nbest", "2")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["image"].endswith("red.png") and len(line["captions"]) == 2


def test_caption_errors(tmp_path, model_dir):
    assert_one_line_error(run("caption", str(model_dir), str(tmp_path / "missing.png")), "missing.png")
    (tmp_path / "fake.png").write_text("<html>not an image</html>")
    assert_one_line_error(run("caption", str(model_dir), str(tmp_path / "fake.png")), "fake.png",
                          "not a readable image")
    assert_one_line_error(run("caption", str(tmp_path / "nomodel"), str(tmp_path / "fake.png")), "nomodel")


def test_train_config_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  decoder:\n    hiden_dim: 5\n")
    assert_one_line_error(run("train", str(cfg)), "hiden_dim", "did you mean 'hidden_dim'")
    assert_one_line_error(run("train", str(tmp_path / "none.yaml")), "none.yaml", "not found")
    ok = tmp_path / "ok.yaml"
    ok.write_text("data: {format: jsonl, path: %s}\n" % (tmp_path / "none.jsonl"))
    assert_one_line_error(run("train", str(ok)), "none.jsonl")


def test_usage_error_exits_2():
    result = run("caption")
    assert result.returncode == 2 and "Traceback" not in result.stderr
