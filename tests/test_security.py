"""Security: no unpickling anywhere in src/, no paths or tracebacks in server answers, uploads
never on disk, no EXIF (GPS included) in anything polymodal writes, dataset roots enforced."""

from __future__ import annotations

import ast
import base64
import builtins
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.config import DataConfig
from polymodal.data.datasets import load_split
from polymodal.errors import DataError
from polymodal.serve import ServeConfig, create_app, engines
from polymodal.serve.uploads import Limits
from tests.badinput.images import GPS, quadrants, with_gps_exif
from tests.conftest import tiny_model

SRC = Path(__file__).resolve().parents[1] / "src" / "polymodal"
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Every call in `source` that can unpickle: pickle/joblib/dill/marshal/shelve loads,
    `torch.load` without `weights_only=True`, numpy loads with `allow_pickle=True`, pandas.read_pickle."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{filename}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNPICKLERS]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if name == "load" and owner == "torch":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif owner in UNPICKLERS and name in ("load", "loads", "Unpickler", "open"):
            found.append(f"{filename}:{node.lineno}: {owner}.{name}")
        elif name == "read_pickle":
            found.append(f"{filename}:{node.lineno}: read_pickle")
        elif name in ("load", "loadtxt") and isinstance(keywords.get("allow_pickle"), ast.Constant) \
                and keywords["allow_pickle"].value is True:
            found.append(f"{filename}:{node.lineno}: {owner}.{name}(allow_pickle=True)")
    return found


def test_the_scanner_finds_every_kind_of_unpickling():
    bad = """
import pickle, joblib
from dill import loads
torch.load(p)
torch.load(p, weights_only=False)
torch.load(p, map_location="cpu")
pickle.loads(b)
joblib.load(p)
np.load(p, allow_pickle=True)
pd.read_pickle(p)
"""
    assert len(unsafe_loads(bad)) == 10
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\njson.load(f)") == []


def test_no_unpickling_anywhere_in_src():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    problems = [p for f in files for p in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert problems == [], problems


# ----------------------------------------------------------------------------- dataset roots
def _jsonl_outside(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "in.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    path = tmp_path / "data" / "captions.jsonl"
    rows = [{"image": "in.png", "caption": "a dog", "split": "train"},
            {"image": "../outside.png", "caption": "a cat", "split": "train"},
            {"image": "../../../../../../etc/passwd", "caption": "secrets", "split": "train"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_paths_escaping_the_root_are_refused_unless_allowed(tmp_path: Path):
    path = _jsonl_outside(tmp_path)
    records = load_split(DataConfig(format="jsonl", path=str(path)), "train")
    assert [Path(r.image).name for r in records] == ["in.png"]
    allowed = load_split(DataConfig(format="jsonl", path=str(path), allow_outside_root=True), "train")
    assert [Path(r.image).name for r in allowed] == ["in.png", "outside.png", "passwd"]  # the user said so
    only_bad = tmp_path / "data" / "bad.jsonl"
    only_bad.write_text(json.dumps({"image": "/etc/passwd", "caption": "x"}) + "\n")
    with pytest.raises(DataError, match="allow_outside_root"):
        load_split(DataConfig(format="jsonl", path=str(only_bad)), "train")


# ----------------------------------------------------------------------------- the server

def gps_jpeg(size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    quadrants().resize(size).save(buffer, "JPEG", exif=with_gps_exif(6), quality=90)
    return buffer.getvalue()


def assert_no_exif(data: bytes, what: str, block_allowed: bool = False) -> None:
    """No EXIF tag (no GPS, no camera); `block_allowed`: an empty EXIF block the caller asked for is fine."""
    image = Image.open(io.BytesIO(data))
    assert len(image.getexif()) == 0 and not image.getexif().get_ifd(0x8825), f"{what} carries EXIF tags"
    assert b"SpyCam" not in data, f"{what} carries EXIF bytes"
    if not block_allowed:
        assert "exif" not in image.info and b"Exif\x00\x00" not in data, f"{what} carries an EXIF block"


class Index:
    kind = "image"

    def __init__(self, paths: list[str]):
        self.paths = paths

    def search(self, query: Any, k: int = 5) -> list[tuple[str, float]]:
        return [(p, 1.0 - i / 10) for i, p in enumerate(self.paths)][:k]


@pytest.fixture
def served(tmp_path: Path) -> Any:
    model_dir = tmp_path / "secret-models" / "tiny"
    tiny_model().save_pretrained(model_dir)
    photos = tmp_path / "secret-photos" / "2024"
    photos.mkdir(parents=True)
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(gps_jpeg())
    config = ServeConfig(limits=Limits(max_bytes=2**20, max_pixels=512 * 512))
    with TestClient(create_app([model_dir], index=Index([str(p) for p in sorted(photos.iterdir())]),
                               config=config), raise_server_exceptions=False) as client:
        yield client, tmp_path


def test_the_server_never_echoes_paths_or_tracebacks(served: Any, monkeypatch: pytest.MonkeyPatch):
    client, secret = served
    image = ("photo.jpg", gps_jpeg(), "image/jpeg")
    answers = [
        client.get("/v1/models"), client.get("/healthz"), client.get("/nope"), client.delete("/v1/caption"),
        client.post("/v1/caption", files={"image": ("x.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}),
        client.post("/v1/caption", files={"image": image}, data={"beam_size": "many"}),
        client.post("/v1/caption", content=b"{not json", headers={"content-type": "application/json"}),
        client.post("/v1/retrieve", json={"text": "a red circle", "k": 2}),
        client.get("/v1/index/0"), client.get("/v1/index/99"),
    ]
    hits = answers[7].json()["hits"]
    assert [h["path"] for h in hits] == ["0.jpg", "1.jpg"], hits  # names under the index, not server paths

    (secret / "secret-photos" / "2024" / "1.jpg").unlink()  # the index is now out of date
    answers.append(client.get("/v1/index/1"))
    assert answers[-1].status_code == 404 and answers[-1].json()["error"].startswith("1.jpg: image file not found")

    def user_error(*args: Any) -> None:
        raise DataError(f"{secret}/secret-models/tiny/labels.txt: unreadable; fix it")

    monkeypatch.setattr(engines, "run_caption_batch", user_error)
    answers.append(client.post("/v1/caption", files={"image": image}))
    assert answers[-1].status_code == 422 and "tiny/labels.txt" in answers[-1].json()["error"]

    def crash(*args: Any) -> None:
        raise RuntimeError(f"boom in {secret}/secret-models/tiny/model.safetensors")

    monkeypatch.setattr(engines, "run_caption_batch", crash)
    answers.append(client.post("/v1/caption", files={"image": image}))
    assert answers[-1].status_code == 500
    for r in answers:
        body = r.text
        for leak in (str(secret), "secret-models", "secret-photos", "Traceback", 'File "', "site-packages",
                     str(SRC), "boom"):
            assert leak not in body, f"{r.request.method} {r.request.url.path} answered {body[:300]!r}"


def test_uploads_never_touch_the_disk(served: Any, monkeypatch: pytest.MonkeyPatch):
    """No temporary file and no file opened for writing while requests with images are served."""
    client, _ = served
    writes: list[str] = []
    real_open = builtins.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(m in mode for m in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def no_temp(*args: Any, **kwargs: Any) -> Any:
        writes.append("tempfile")
        raise AssertionError("a temporary file was created")

    monkeypatch.setattr(builtins, "open", guarded_open)
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, no_temp)
    big = io.BytesIO()
    Image.frombytes("RGB", (512, 512), bytes(range(256)) * 3072).save(big, "BMP")  # 768 KB, spools in memory
    b64 = base64.b64encode(gps_jpeg()).decode()
    assert client.post("/v1/caption", files={"image": ("big.bmp", big.getvalue(), "image/bmp")}).status_code == 200
    assert client.post("/v1/caption", json={"image": b64, "heatmaps": True}).status_code == 200
    assert client.post("/v1/retrieve", files={"image": ("q.jpg", gps_jpeg(), "image/jpeg")}).status_code == 200
    assert client.post("/v1/caption", files={"image": ("x.jpg", b"\xff\xd8\xff" + b"\x00" * 10, "image/jpeg")}
                       ).status_code == 422
    assert writes == []


def test_nothing_polymodal_writes_carries_exif(served: Any, tmp_path: Path):
    from polymodal.data.images import load_image
    from polymodal.eval.viz import attention_heatmaps

    client, _ = served
    r = client.post("/v1/caption", files={"image": ("gps.jpg", gps_jpeg(), "image/jpeg")}, data={"heatmaps": "true"})
    assert r.status_code == 200
    for png in [r.json()["view"], *r.json()["heatmaps"]]:
        assert_no_exif(base64.b64decode(png), "a heatmap from the server")
    assert_no_exif(client.get("/v1/index/0").content, "an index thumbnail")
    # The Python API, even when handed an image still holding its EXIF (Image.open, not load_image).
    opened = Image.open(io.BytesIO(gps_jpeg()))
    assert opened.getexif().get_ifd(0x8825) == GPS  # the input really has GPS
    import torch

    paths = attention_heatmaps(opened, ["a", "dog"], torch.rand(2, 16), tmp_path / "maps")
    for path in paths:
        assert_no_exif(path.read_bytes(), str(path.name))
    clean = load_image(gps_jpeg())
    saved = io.BytesIO()
    clean.save(saved, "JPEG", exif=clean.getexif())  # a caller copying "all" metadata still gets none
    assert_no_exif(saved.getvalue(), "a re-saved load_image result", block_allowed=True)


def test_video_clips_outside_their_dataset_folder_are_refused(tmp_path: Path):
    from polymodal.data.audio import MelConfig
    from polymodal.data.clips import ClipBank, clip_path

    clip = {"id": "c1", "video": "../../../etc/passwd", "split": "train"}
    with pytest.raises(DataError, match="points outside the dataset folder"):
        ClipBank.build([clip], tmp_path, frames=2, size=16, mel=MelConfig(), encode=None, progress=False)
    assert clip_path(tmp_path, {"id": "c2", "video": "videos/c2.mp4"}) == tmp_path / "videos" / "c2.mp4"
