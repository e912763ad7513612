"""Annotation readers on small valid and broken files written into tmp_path."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from polymodal.data.formats import read_coco, read_karpathy, read_records
from polymodal.data.line_formats import read_csv, read_flickr, read_jsonl
from polymodal.data.records import SkipReport
from polymodal.errors import ConfigError, DataError
from polymodal.registry import DATASETS


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """tmp_path with images/a.png, images/b.png, images/c.png (1x1 PNGs)."""
    (tmp_path / "images").mkdir()
    for name in "abc":
        Image.new("RGB", (1, 1)).save(tmp_path / "images" / f"{name}.png")
    return tmp_path


def img(root: Path, name: str) -> str:
    return os.path.abspath(root / "images" / name)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def coco(images: list[dict], annotations: list[dict]) -> dict:
    return {"info": {}, "images": images, "annotations": annotations}


def test_all_formats_are_registered():
    assert {"coco", "karpathy", "flickr", "jsonl", "csv"} <= set(DATASETS.names())


# ----------------------------------------------------------------------------- COCO
def test_coco_groups_captions_and_resolves_paths(root):
    path = write_json(root / "captions.json", coco(
        [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png", "width": 1}],
        [{"image_id": 1, "caption": " a dog "}, {"image_id": 2, "caption": "a cat"},
         {"image_id": 1, "caption": "a puppy\n"}],
    ))
    report = SkipReport()
    records = read_coco(path, images=root / "images", report=report)
    assert [(r.id, r.image, r.captions, r.split) for r in records] == [
        ("1", img(root, "a.png"), ["a dog", "a puppy"], None), ("2", img(root, "b.png"), ["a cat"], None)]
    assert report.count == 0
    # a COCO file without per-image splits holds one split: a requested split keeps it all
    assert [r.split for r in read_coco(path, images=root / "images", split="val")] == ["val", "val"]


def test_coco_filters_by_image_split_field(root):
    path = write_json(root / "c.json", coco(
        [{"id": 1, "file_name": "images/a.png", "split": "train"}, {"id": 2, "file_name": "images/b.png", "split": "test"}],
        [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"}],
    ))
    assert [r.id for r in read_coco(path, split="test")] == ["2"]  # default image root: the file's folder
    assert len(read_coco(path)) == 2


def test_coco_record_problems_are_skipped_and_counted(root):
    path = write_json(root / "captions.json", coco(
        [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}, {"id": 3, "file_name": "c.png"},
         {"file_name": "b.png"}],
        [{"image_id": 1, "caption": "good"}, {"image_id": 1}, {"image_id": 99, "caption": "orphan"},
         {"image_id": 2, "caption": "no file"}, {"image_id": 1, "caption": 5}, {"image_id": 1, "caption": "  "}],
    ))
    report = SkipReport()
    records = read_coco(path, images=root / "images", report=report)
    assert [(r.id, r.captions) for r in records] == [("1", ["good"])]
    assert report.reasons == {
        "annotation has no 'caption' key": 1, "unknown image_id": 1, "image file not found": 1,
        "caption is not a string": 1, "empty caption": 1, "image has no captions": 1, "image entry has no 'id' key": 1,
    }
    assert any("captions.json annotation 1" in e for e in report.examples)


def test_coco_file_level_errors_name_the_file(root):
    bad = root / "broken.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(line 2, column 12"):
        read_coco(bad)
    no_ann = write_json(root / "no_ann.json", {"images": []})
    with pytest.raises(DataError, match=r"no_ann\.json: 'annotations' is missing; a COCO captions file"):
        read_coco(no_ann)
    karpathy = write_json(root / "dataset_coco.json", {"images": [{"filename": "a.png", "sentences": []}]})
    with pytest.raises(DataError, match="use format 'karpathy'"):
        read_coco(karpathy)
    with pytest.raises(DataError, match=r"list\.json: top level is a JSON list"):
        read_coco(write_json(root / "list.json", []))
    with pytest.raises(DataError, match=r"absent\.json: annotation file not found"):
        read_coco(root / "absent.json")


def test_coco_all_records_bad_raises_with_summary(root):
    path = write_json(root / "captions.json", coco([{"id": 1, "file_name": "a.png"}], [{"image_id": 1}]))
    with pytest.raises(DataError) as info:
        read_coco(path, images=root / "images")
    message = str(info.value)
    assert "captions.json: no usable records" in message and "annotation has no 'caption' key" in message
    missing = write_json(root / "m.json", coco([{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": "x"}]))
    with pytest.raises(DataError, match=r"pass images=<the image folder>"):
        read_coco(missing)  # a.png is under images/, not next to m.json


def test_coco_bom_duplicates_and_warning_without_report(root, caplog):
    data = coco([{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
                [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}])
    path = root / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).replace(", ", ",\r\n").encode())
    with caplog.at_level(logging.WARNING):
        records = read_coco(path, images=root / "images")
    assert [(r.image, r.captions) for r in records] == [(img(root, "a.png"), ["x", "y"])]  # same file merged
    assert "skipped 1 bad records (1 duplicate id for a different image)" in caplog.text


# ----------------------------------------------------------------------------- Karpathy
def test_karpathy_splits_restval_and_filepath(root):
    path = write_json(root / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "images", "filename": "a.png", "split": "train", "cocoid": 7, "imgid": 0,
         "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}, {"tokens": ["a", "pet"]}]},
        {"filepath": "images", "filename": "b.png", "split": "restval", "cocoid": 8, "sentences": [{"raw": "b"}]},
        {"filepath": "images", "filename": "c.png", "split": "test", "cocoid": 9, "sentences": [{"raw": "c"}]},
    ]})
    train = read_karpathy(path, split="train")
    assert [(r.id, r.image, r.captions, r.split) for r in train] == [
        ("7", img(root, "a.png"), ["A dog.", "a pet"], "train"), ("8", img(root, "b.png"), ["b"], "restval")]
    assert [r.id for r in read_karpathy(path, split="test")] == ["9"]
    assert len(read_karpathy(path)) == 3


def test_karpathy_bad_records_and_structure(root):
    path = write_json(root / "dataset_flickr8k.json", {"images": [
        {"filename": "a.png", "split": "test", "imgid": 0, "sentences": [{"raw": "ok"}, {"raw": ""}, {}]},
        {"split": "test", "imgid": 1, "sentences": [{"raw": "no filename"}]},
    ]})
    report = SkipReport()
    records = read_karpathy(path, images=root / "images", report=report)
    assert [(r.id, r.captions) for r in records] == [("0", ["ok"])]
    assert report.reasons == {"empty caption": 1, "sentence has no 'raw' text": 1, "image has no 'filename' key": 1}
    with pytest.raises(DataError, match=r"k\.json: no top-level 'images' list"):
        read_karpathy(write_json(root / "k.json", {"annotations": []}))


# ----------------------------------------------------------------------------- Flickr
FLICKR_TOKENS = "a.png#0\tA child in a pink dress .\r\na.png#1 A girl .\r\n\r\nb.png#0\tA dog runs .\r\nc.png#0\t \r\nbroken line\r\n"


def test_flickr_token_file_with_bom_crlf_and_bad_lines(root):
    path = root / "Flickr8k.token.txt"
    path.write_bytes(b"\xef\xbb\xbf" + FLICKR_TOKENS.encode())
    report = SkipReport()
    records = read_flickr(path, images=root / "images", report=report)
    assert [(r.id, r.image, r.captions) for r in records] == [
        ("a.png", img(root, "a.png"), ["A child in a pink dress .", "A girl ."]), ("b.png", img(root, "b.png"), ["A dog runs ."])]
    assert report.reasons == {"empty caption": 1, "line has no caption after the image name": 1}


def test_flickr_split_list_file(root):
    path = root / "results_20130124.token"
    path.write_text(FLICKR_TOKENS, encoding="utf-8")
    (root / "Flickr_8k.trainImages.txt").write_text("b.png\n", encoding="utf-8")
    for split in [str(root / "Flickr_8k.trainImages.txt"), "Flickr_8k.trainImages.txt", "train"]:
        records = read_flickr(path, images=root / "images", split=split)
        assert [(r.id, r.split) for r in records] == [("b.png", "train")]
    with pytest.raises(DataError, match=r"results_20130124\.token: split 'test' is not an image-list file"):
        read_flickr(path, images=root / "images", split="test")


def test_flickr_captions_csv_variant(root):
    path = root / "captions.txt"
    path.write_text('image,caption\na.png,"A dog, running."\na.png,A dog, unquoted.\nb.png,A cat .\n', encoding="utf-8")
    records = read_flickr(path, images=root / "images")
    assert [(r.id, r.captions) for r in records] == [("a.png", ["A dog, running.", "A dog, unquoted."]), ("b.png", ["A cat ."])]


# ----------------------------------------------------------------------------- JSONL
def test_jsonl_merges_lines_and_skips_bad_ones(root):
    path = root / "captions.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([
        json.dumps({"image": "images/a.png", "caption": " a dog "}),
        "",
        json.dumps({"image": "images/a.png", "captions": ["a pet", ""]}),
        json.dumps({"image": "images/b.png", "caption": "b", "id": 5, "split": "val"}),
        '{"image": "images/c.png", "caption": ',
        json.dumps({"caption": "no image"}),
        json.dumps({"image": "images/c.png"}),
        json.dumps({"image": "images/missing.png", "caption": "x"}),
        json.dumps(["not", "an", "object"]),
    ]).encode())
    report = SkipReport()
    records = read_jsonl(path, report=report)
    assert [(r.id, r.image, r.captions, r.split) for r in records] == [
        ("images/a.png", img(root, "a.png"), ["a dog", "a pet"], None), ("5", img(root, "b.png"), ["b"], "val")]
    assert report.reasons == {"empty caption": 1, "invalid JSON": 1, "no 'image' key": 1, "no 'caption' key": 1,
                              "image file not found": 1, "line is not a JSON object": 1}
    assert any("captions.jsonl line 5" in e for e in report.examples)
    # a record without a split counts as part of any requested split
    assert [(r.id, r.split) for r in read_jsonl(path, split="val")] == [("images/a.png", "val"), ("5", "val")]
    assert [r.split for r in read_jsonl(path, split="test")] == ["test"]


def test_jsonl_file_level_errors(root):
    array = root / "array.jsonl"
    array.write_text('[{"image": "a.png", "caption": "x"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"array\.jsonl: is a JSON array, not JSON Lines"):
        read_jsonl(array)
    latin = root / "latin.jsonl"
    latin.write_bytes('{"image": "a.png", "caption": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.jsonl: not UTF-8 text"):
        read_jsonl(latin)
    junk = root / "junk.jsonl"
    junk.write_text("nope\nnope\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"junk\.jsonl: no usable records; .*2 invalid JSON"):
        read_jsonl(junk)


# ----------------------------------------------------------------------------- CSV
def test_csv_quotes_merging_and_splits(root):
    path = root / "captions.csv"
    path.write_bytes(
        b"\xef\xbb\xbfImage, Caption ,split\r\n"
        b'a.png,"a dog, sleeping",train\r\na.png,a dog,train\r\nb.png,"two\r\nlines",test\r\nc.png,,train\r\n\r\nshort\r\n'
    )
    report = SkipReport()
    records = read_csv(path, images=root / "images", report=report)
    assert [(r.id, r.image, r.captions, r.split) for r in records] == [
        ("a.png", img(root, "a.png"), ["a dog, sleeping", "a dog"], "train"), ("b.png", img(root, "b.png"), ["two\r\nlines"], "test")]
    assert report.reasons == {"empty caption": 1, "row has fewer columns than the header": 1}
    assert [r.id for r in read_csv(path, images=root / "images", split="test")] == ["b.png"]


def test_csv_missing_column_and_tsv(root):
    bad = root / "bad.csv"
    bad.write_text("file,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv: header has no 'image' column \(found: file, text\)"):
        read_csv(bad)
    tsv = root / "c.tsv"
    tsv.write_text("image\tcaption\tid\nimages/c.png\ta, b\tc1\n", encoding="utf-8")
    assert [(r.id, r.captions) for r in read_csv(tsv)] == [("c1", ["a, b"])]


# ----------------------------------------------------------------------------- read_records
def test_read_records_dispatches_and_checks(root):
    path = root / "captions.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n", encoding="utf-8")
    assert read_records("jsonl", path, images=root / "images")[0].captions == ["x"]
    with pytest.raises(DataError, match=r"missing\.jsonl: annotation file not found"):
        read_records("jsonl", root / "missing.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_records("coco", root)
    with pytest.raises(ConfigError, match="did you mean 'jsonl'"):
        read_records("jsonlines", path)
