"""Streaming readers (data/streams.py): WebDataset tar shards and Parquet / Arrow files, sharded over
simulated torchrun ranks and real DataLoader workers, bad samples skipped and counted, and two
training steps of the captioning and contrastive tasks straight from shards."""

from __future__ import annotations

import inspect
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from polymodal.config import load_config
from polymodal.data.datasets import collate_captions
from polymodal.data.records import SkipReport
from polymodal.data.stream_formats import ParquetStream, WebDatasetStream
from polymodal.data.streams import shard_paths
from polymodal.errors import DataError

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24 + i % 5, 20), COLOURS[i % len(COLOURS)]).save(out, "PNG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, shards: int = 4, per_shard: int = 5) -> tuple[list[str], dict[str, int]]:
    """Tiny OpenCLIP-style shards; returns the good captions and the bad samples written, by reason."""
    folder.mkdir(parents=True, exist_ok=True)
    good: list[str] = []
    for s in range(shards):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for j in range(per_shard):
                i, key = s * per_shard + j, f"s{s}_{j:04d}"
                caption = f"a {COLOURS[i % len(COLOURS)]} square number {i}"
                _add(tar, f"{key}.png", _png(i))
                if i % 2:
                    _add(tar, f"{key}.txt", caption.encode())
                else:
                    _add(tar, f"{key}.json", json.dumps({"caption": caption, "width": 24}).encode())
                good.append(caption)
        if s == 0:  # three bad samples, each a different fault
            with tarfile.open(folder / f"{s:03d}.tar", "a") as tar:
                _add(tar, "bad_img.png", b"\x89PNG not really")
                _add(tar, "bad_img.txt", b"a broken picture")
                _add(tar, "no_caption.png", _png(0))
                _add(tar, "bad_json.png", _png(1))
                _add(tar, "bad_json.json", b"{caption: oops")
    return good, {"bad image": 1, "no caption (.txt or .json)": 1, "bad JSON": 1}


def read_all(make_stream, ranks: int = 2, workers: int = 2) -> tuple[list[str], list[int], int]:
    """Texts and records every simulated rank's DataLoader workers yield, and the skipped count."""
    texts, records, skipped = [], [], 0
    for rank in range(ranks):
        loader = DataLoader(make_stream(rank, ranks), batch_size=3, num_workers=workers,
                            collate_fn=_collate_with_text)
        for batch in loader:
            skipped += int(batch["skipped"])
            texts += batch.get("text", [])
            records += batch["record"].tolist() if "record" in batch else []
    return texts, records, skipped


def _collate_with_text(items):
    batch = collate_captions(items)
    batch["text"] = [it["text"] for it in items if it is not None]
    return batch


def test_webdataset_reads_every_good_sample_once_over_two_ranks_and_two_workers(tmp_path):
    good, bad = write_shards(tmp_path / "shards")
    pattern = str(tmp_path / "shards" / "{000..003}.tar")
    texts, records, skipped = read_all(lambda r, w: WebDatasetStream(pattern, 16, rank=r, world_size=w))
    assert sorted(texts) == sorted(good) and len(set(texts)) == len(good) == 20
    assert len(set(records)) == len(records)  # each image its own "record" (never a false negative)
    assert skipped == sum(bad.values())


def test_webdataset_skips_and_counts_each_kind_of_bad_sample(tmp_path):
    good, _ = write_shards(tmp_path, shards=1)
    report = SkipReport(source="shards")
    stream = WebDatasetStream([tmp_path / "000.tar"], 16, report=report)
    items = list(stream)
    assert [it["text"] for it in items if it is not None] == good
    assert report.count == 3 and report.reasons["bad JSON"] == 1
    assert report.reasons["no caption (.txt or .json)"] == 1
    assert any("000.tar bad_img" in e for e in report.examples)


def test_webdataset_stream_is_lazy_and_a_broken_shard_names_its_file(tmp_path):
    write_shards(tmp_path, shards=3, per_shard=4)
    stream = WebDatasetStream(str(tmp_path / "{000..002}.tar"), 16, shuffle=False)
    items = iter(stream)
    assert inspect.isgenerator(items)
    next(items)  # only the first shard is open: the others can go (or break) without it noticing
    (tmp_path / "001.tar").write_bytes((tmp_path / "001.tar").read_bytes()[:1500])  # truncated
    with pytest.raises(DataError, match=r"001\.tar: unreadable tar shard") as err:
        list(items)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"003\.tar: no such shard"):
        WebDatasetStream(str(tmp_path / "{002..007}.tar"), 16)
    with pytest.raises(DataError, match="2 shards .* for 4 ranks; each rank needs at least one"):
        WebDatasetStream(str(tmp_path / "{000,002}.tar"), 16, rank=3, world_size=4)


def test_shard_patterns_folders_and_globs(tmp_path):
    write_shards(tmp_path, shards=3, per_shard=1)
    names = ["000.tar", "001.tar", "002.tar"]
    assert [p.name for p in shard_paths(tmp_path, (".tar",))] == names
    assert [p.name for p in shard_paths(str(tmp_path / "*.tar"), (".tar",))] == names
    assert [p.name for p in shard_paths(str(tmp_path / "{000,002}.tar"), (".tar",))] == ["000.tar", "002.tar"]


# ----------------------------------------------------------------------------- Parquet / Arrow
def _rows(n: int) -> tuple[list, list, list[str]]:
    images, captions, good = [], [], []
    for i in range(n):
        text = [f"a {COLOURS[i % 8]} square number {i}", f"square {i}"] if i % 3 == 0 else f"a {COLOURS[i % 8]} thing {i}"
        images.append(_png(i))
        captions.append(text)
        good += text if isinstance(text, list) else [text]
    images += [b"not an image", _png(1), None]  # three bad rows: bytes, caption, image
    captions += ["broken", "", "no image here"]
    return images, captions, good


def test_parquet_row_groups_are_shared_over_ranks_and_workers(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    images, captions, good = _rows(14)
    half = len(images) // 2
    for k, rows in enumerate((slice(0, half), slice(half, None))):
        table = pa.table({"jpg": images[rows], "txt": [c if isinstance(c, list) else [c] for c in captions[rows]]})
        pq.write_table(table, tmp_path / f"part-{k}.parquet", row_group_size=2)  # 8 row groups in all
    assert sum(pq.ParquetFile(p).num_row_groups for p in tmp_path.glob("*.parquet")) == 9

    texts, _, skipped = read_all(lambda r, w: ParquetStream(tmp_path, 16, image_column="jpg", caption_column="txt",
                                                            rank=r, world_size=w))
    assert sorted(texts) == sorted(good) and skipped == 3
    with pytest.raises(DataError, match=r"part-\d\.parquet: no column 'image' \(columns: jpg, txt\)"):
        list(ParquetStream(tmp_path, 16))


def test_hugging_face_save_to_disk_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    images, captions, good = _rows(6)
    folder = tmp_path / "hf" / "train"
    folder.mkdir(parents=True)
    (tmp_path / "hf" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": None} for b in images], type=image_type),
        "caption": pa.array([c if isinstance(c, list) else [c] for c in captions]),
    })
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=4):
                writer.write_batch(batch)
    texts, _, skipped = read_all(lambda r, w: ParquetStream(tmp_path / "hf", 16, split="train", rank=r, world_size=w))
    assert sorted(texts) == sorted(good) and skipped == 3
    (folder / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data-00000-of-00001.arrow: unreadable Parquet/Arrow file"):
        list(ParquetStream(tmp_path / "hf", 16, split="train"))


# ----------------------------------------------------------------------------- training from shards
def test_captioning_trains_two_steps_from_webdataset_shards(tmp_path):
    from polymodal.train.captioning import train_captioner

    write_shards(tmp_path / "shards")
    cfg = load_config("configs/attention_lstm.yaml", [
        "data.format=webdataset", f"data.path={tmp_path / 'shards' / '{000..003}.tar'}", "data.val_samples=6",
        f"train.out_dir={tmp_path / 'run'}", "train.steps=2", "train.batch_size=4", "train.warmup_steps=1",
        "train.eval_every=0", "train.checkpoint_every=0", "train.num_workers=2", "model.image_size=32",
        "model.encoder.width=8", "model.decoder.hidden_dim=32", "model.decoder.embed_dim=16"])
    summary = train_captioner(cfg, progress=False)
    assert summary["step"] == 2 and summary["train_pairs"] is None
    # <pad> <bos> <eos> <unk>, 8 colours, 20 numbers, "a square number", and "a broken picture": the
    # vocabulary pass reads captions without decoding images
    assert summary["vocab_size"] == 4 + 8 + 20 + 3 + 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_contrastive_trains_two_steps_from_parquet(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    from polymodal.train.tasks import load_task_config

    images, captions, _ = _rows(12)
    flat = [c[0] if isinstance(c, list) else c for c in captions]
    pq.write_table(pa.table({"image": images, "caption": flat}), tmp_path / "train.parquet", row_group_size=4)
    task, cfg = load_task_config("configs/contrastive.yaml", [
        "data.format=parquet", f"data.path={tmp_path}", "data.val_samples=4", "model.image_size=32",
        "model.encoder.width=8", "model.text.width=16", "model.text.layers=1", "model.embed_dim=16",
        "train.steps=2", "train.batch_size=4", "train.eval_every=0", "train.warmup_steps=1",
        "train.similar_batches=0", f"train.out_dir={tmp_path / 'run'}"])
    summary = task(cfg, progress=False)
    assert summary["step"] == 2 and summary["test"]["strict"]["images"] == 4
