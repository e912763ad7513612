"""Caption metrics: identical to pycocoevalcap called directly; results files checked line by line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from polymodal.errors import ConfigError, DataError
from polymodal.eval.caption_metrics import (
    METRICS,
    caption_metrics,
    load_references,
    load_results,
    meteor_scorer,
    simple_tokenize,
)

REFERENCES = {
    "1": ["A small red circle to the left of a blue square.", "a red circle and a blue square"],
    "2": ["A large green triangle above a yellow star.", "a green triangle over a star"],
    "3": ["Two purple diamonds.", "two diamonds, both purple"],
    "4": ["A blue square below a red circle.", "a square under a circle"],
}
RESULTS = {"1": "a red circle left of a blue square", "2": "a green star above a triangle",
           "3": "two purple diamonds", "4": "a red square"}


def _java_children() -> list[int]:
    """Live Java processes whose parent is this test process (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2:].split()[:2]
        if name == "java" and int(ppid) == os.getpid() and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _direct(results: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """The coco-caption recipe, step by step, with pycocoevalcap's own classes."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in results.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    out = {f"bleu{i + 1}": b for i, b in enumerate(bleu)}
    out["meteor"] = meteor.compute_score(gts, res)[0]
    meteor.__del__()
    out["rouge_l"] = Rouge().compute_score(gts, res)[0]
    out["cider"] = Cider().compute_score(gts, res)[0]
    return out


def test_metrics_match_pycocoevalcap_and_leave_no_java_running():
    ours = caption_metrics(RESULTS, REFERENCES)
    assert list(ours) == list(METRICS)
    assert _java_children() == []  # METEOR's JVM was stopped, not left to the garbage collector
    direct = _direct(RESULTS, REFERENCES)
    for key in METRICS:
        assert ours[key] == pytest.approx(direct[key], abs=1e-9), key
    assert 0 < ours["bleu4"] < ours["bleu1"] < 1


def test_exact_captions_score_perfectly_and_unrelated_ones_near_zero():
    exact = {key: refs[1] for key, refs in REFERENCES.items()}
    perfect = caption_metrics(exact, REFERENCES)
    assert perfect["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["cider"] > 3.0
    unrelated = {key: "an empty kitchen with wooden cupboards" for key in REFERENCES}
    assert caption_metrics(unrelated, REFERENCES, cider_only=True)["cider"] < 0.05


def test_cider_only_and_simple_tokenizer_agree_with_ptb_on_plain_captions():
    ptb = caption_metrics(RESULTS, REFERENCES, cider_only=True)
    simple = caption_metrics(RESULTS, REFERENCES, cider_only=True, tokenizer="simple")
    assert list(ptb) == ["cider"]
    assert simple["cider"] == pytest.approx(ptb["cider"], abs=1e-9)
    assert simple_tokenize("Two diamonds, both PURPLE.") == "two diamonds both purple"


def test_a_dead_meteor_process_is_one_error_not_a_hang():
    with pytest.raises(ConfigError, match="METEOR's Java process stopped"):
        with meteor_scorer() as meteor:
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()
            meteor.compute_score({"1": ["a red circle"]}, {"1": ["a red circle"]})
    del meteor  # Meteor.__del__ must not block on the lock compute_score left held
    assert _java_children() == []


def test_results_without_references_are_refused():
    with pytest.raises(DataError, match="no references"):
        caption_metrics({"99": "a circle"}, REFERENCES, cider_only=True)


# ----------------------------------------------------------------------------- results files
def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_load_results_reads_int_and_string_ids(tmp_path):
    path = _write(tmp_path / "res.json", [{"image_id": 1, "caption": " a red circle "},
                                          {"image_id": "2", "caption": "a star"}])
    assert load_results(path, REFERENCES) == {"1": "a red circle", "2": "a star"}


@pytest.mark.parametrize("content, message", [
    ("[{\"image_id\": 1, \"caption\": ", r"not valid JSON \(line 1"),
    ({"annotations": []}, "not a list.*annotation file"),
    ([{"image_id": 1, "caption": "a"}, {"caption": "b"}], "entry 1 has no 'image_id' key"),
    ([{"image_id": 1}], "entry 0 has no 'caption' key"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": "1", "caption": "b"}], "entry 1 repeats image_id '1'"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": 7, "caption": "b"}], "image_id 7 is not in the refer"),
    ([{"image_id": None, "caption": "a"}], "entry 0: image_id None is not an integer"),
    ([{"image_id": 1, "caption": 5}], "entry 0: caption is a int"),
    ([], "no entries"),
])
def test_bad_results_files_name_the_file_and_entry(tmp_path, content, message):
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(DataError, match=message) as err:
        load_results(path, REFERENCES)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)


def test_missing_results_file(tmp_path):
    with pytest.raises(DataError, match="results file not found"):
        load_results(tmp_path / "nope.json")


def test_load_references_filters_by_split(tmp_path):
    path = _write(tmp_path / "captions.json", {
        "images": [{"id": 1, "file_name": "a.png", "split": "test"},
                   {"id": 2, "file_name": "b.png", "split": "train"}, {"id": 3, "file_name": "c.png"}],
        "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"},
                        {"image_id": 3, "caption": "c"}, {"image_id": 1, "caption": "a2"}]})
    assert load_references(path) == {"1": ["a", "a2"], "2": ["b"], "3": ["c"]}
    assert load_references(path, split="test") == {"1": ["a", "a2"], "3": ["c"]}
    with pytest.raises(DataError, match="no 'annotations' list"):
        load_references(_write(tmp_path / "x.json", [1]))
