"""The streaming formats: WebDataset tar shards and Parquet / Arrow files (the rules are in streams.py).

`WebDatasetStream` (`data.format: webdataset`) reads tar shards in the OpenCLIP convention: the files of
one sample share a key (the name up to the first dot) and sit next to each other in the tar: `key.jpg` /
`.jpeg` / `.png` / `.webp`, plus `key.txt` (the caption) and/or `key.json` (`"caption"`: a string, or
`"captions"`: a list). A tar is read as a stream, front to back, one member at a time.

`ParquetStream` (`data.format: parquet`) reads `*.parquet` files (a unit per row group) or a Hugging Face
`datasets` folder (`save_to_disk`: `*.arrow` files, a unit per record batch; a DatasetDict folder gives
the split of that name) with an image column (encoded bytes, or the `{"bytes", "path"}` struct of the
`Image` feature) and a caption column (a string or a list of strings), named by `data.image_column` /
`data.caption_column`.

Example:
    >>> import io, tarfile, tempfile
    >>> from PIL import Image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> def add(tar, name, data):
    ...     info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    >>> png = io.BytesIO(); Image.new("RGB", (40, 30), "red").save(png, "PNG")
    >>> with tarfile.open(f"{tmp.name}/000.tar", "w") as tar:
    ...     add(tar, "a.png", png.getvalue()); add(tar, "a.txt", b"a red square")
    ...     add(tar, "b.png", b"not an image"); add(tar, "b.txt", b"broken")
    >>> stream = WebDatasetStream(f"{tmp.name}/{{000..000}}.tar", image_size=16)
    >>> items = list(stream)
    >>> items[0]["image"].shape, items[0]["text"], items[1], stream.report.count
    (torch.Size([3, 16, 16]), 'a red square', None, 1)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .annotation_io import caption_problem, clean_caption
from .streams import CaptionStream, Sample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _parse_captions(text: bytes | None, meta: bytes | None) -> tuple[list[str], str | None]:
    """Captions from `key.txt` (preferred) or `key.json`, or the reason there are none."""
    if text is not None:
        try:
            caption = clean_caption(text.decode("utf-8-sig"))
        except UnicodeDecodeError:
            return [], "caption is not UTF-8"
        return ([caption], None) if caption else ([], "empty caption")
    if meta is None:
        return [], "no caption (.txt or .json)"
    try:
        obj = json.loads(meta.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return [], "bad JSON"
    value = obj.get("captions", obj.get("caption")) if isinstance(obj, dict) else None
    values = value if isinstance(value, list) else [value]
    captions = [c for c in (clean_caption(v) for v in values) if c]
    if value is None:
        return [], "JSON has no 'caption' or 'captions'"
    return (captions, None) if captions else ([], caption_problem(values[0] if values else ""))


class WebDatasetStream(CaptionStream):
    """Tar shards, one unit each, read front to back (`data.format: webdataset`); see the module doc."""

    suffixes = (".tar", ".tgz")

    def samples(self, unit: Path) -> Iterator[Sample]:
        key, parts = None, {}
        try:
            with tarfile.open(unit, mode="r|*") as tar:  # a stream: no index, no seeking, one member at a time
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, name = posixpath.split(member.name)
                    stem, _, ext = name.partition(".")
                    if (folder, stem) != key and key is not None:
                        yield _tar_sample(unit, key[1], parts)
                        parts = {}
                    key = (folder, stem)
                    parts[ext.lower()] = data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise tarfile.ReadError(f"{member.name} is cut short")
                # A stream ends quietly where a file was cut at a header; a whole tar ends in zero blocks.
                if unit.suffix == ".tar" and unit.stat().st_size < tar.offset + tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("truncated: no end-of-archive blocks")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"{unit}: unreadable tar shard ({err}); re-create it or leave it out of data.path") from None
        if key is not None:
            yield _tar_sample(unit, key[1], parts)


def _tar_sample(shard: Path, key: str, parts: dict[str, bytes]) -> Sample:
    where = f"{shard.name} {key}"
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    captions, problem = _parse_captions(parts.get("txt"), parts.get("json"))
    if image is None:
        problem = "no image (.jpg/.png/.webp)"
    return where, image, captions, problem


class ParquetStream(CaptionStream):
    """Parquet files (a unit per row group) or Hugging Face `save_to_disk` Arrow files (a unit per record
    batch) with image and caption columns (`data.format: parquet`); see the module doc."""

    suffixes = (".parquet", ".arrow")

    def __init__(self, path: Any, image_size: int, image_column: str = "image", caption_column: str = "caption",
                 split: str | None = None, **kwargs: Any):
        if split and not isinstance(path, (list, tuple)) and Path(path, "dataset_dict.json").is_file():
            path = Path(path, split)  # a DatasetDict folder: one sub-folder per split
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("data.format=parquet needs pyarrow: pip install 'polymodal[streams]'") from None
        self.columns = (image_column, caption_column)
        self._units: list[tuple[Path, int]] | None = None
        super().__init__(path, image_size, **kwargs)

    @classmethod
    def config_kwargs(cls, cfg: Any, split: str | None) -> dict[str, Any]:
        return {"image_column": cfg.image_column, "caption_column": cfg.caption_column, "split": split}

    def units(self) -> list[tuple[Path, int]]:
        if self._units is None:
            self._units = [(f, i) for f in self.files for i in range(self._count(f))]
        return self._units

    def _count(self, file: Path) -> int:
        import pyarrow.parquet as pq

        with _file_errors(file):
            if file.suffix == ".arrow":
                return sum(1 for _ in _arrow_batches(file))
            return pq.ParquetFile(file).num_row_groups

    def samples(self, unit: tuple[Path, int]) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        file, index = unit
        with _file_errors(file):
            if file.suffix == ".arrow":
                table = next(b for i, b in enumerate(_arrow_batches(file)) if i == index)
                names = table.schema.names
            else:
                parquet = pq.ParquetFile(file)
                names = parquet.schema_arrow.names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise DataError(f"{file}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                                "set data.image_column / data.caption_column")
            if file.suffix != ".arrow":
                table = parquet.read_row_group(index, columns=list(self.columns))
            images, texts = (table.column(c).to_pylist() for c in self.columns)
        for row, (image, text) in enumerate(zip(images, texts, strict=True)):
            yield _row_sample(f"{file.name} row group {index} row {row}", image, text)


def _row_sample(where: str, image: Any, text: Any) -> Sample:
    data = image.get("bytes") if isinstance(image, dict) else image  # the datasets Image feature is a struct
    values = text if isinstance(text, list) else [text]
    captions = [c for c in (clean_caption(v) for v in values) if c]
    problem = None if captions else ("no caption" if text is None else caption_problem(values[0] if values else ""))
    if not isinstance(data, bytes) or not data:
        problem = "no image bytes"
    return where, data, captions, problem


def _arrow_batches(file: Path) -> Iterator[Any]:
    import pyarrow as pa

    yield from pa.ipc.open_stream(pa.memory_map(str(file)))  # memory-mapped: skipped batches cost no reads


class _file_errors:
    """Turn pyarrow's errors about a file into one-line DataErrors naming it."""

    def __init__(self, file: Path):
        self.file = file

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        import pyarrow as pa

        if err is not None and isinstance(err, (pa.ArrowException, OSError)):
            raise DataError(f"{self.file}: unreadable Parquet/Arrow file ({str(err).splitlines()[0]}); "
                            "re-create it or leave it out of data.path") from None
        return False
