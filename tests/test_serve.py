"""The REST API through FastAPI's TestClient: every endpoint, bad uploads, batching, limits."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.config import EncoderConfig
from polymodal.data.dialogue import ASSISTANT, USER
from polymodal.eval import retrieval
from polymodal.models import chat, dual_encoder, vqa
from polymodal.nn.fusion.base import FusionConfig
from polymodal.nn.text_encoders import TextEncoderConfig
from polymodal.serve import ServeConfig, create_app
from polymodal.serve.batching import DynamicBatcher
from polymodal.serve.uploads import Limits
from polymodal.text.tokenizer import SPECIALS, WordTokenizer
from tests.conftest import tiny_model


def png_bytes(size: tuple[int, int] = (48, 40), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR chunk claiming width x height, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


class FakeVQA:
    """Duck-typed VQA model: the server needs only `answer_topk` / `answer` (and `parameters`)."""

    architecture = "fake_vqa"

    def parameters(self) -> list[torch.Tensor]:
        return [torch.zeros(3)]

    def eval(self) -> FakeVQA:
        return self

    def answer(self, image: Image.Image, question: str) -> list[str]:
        return ["red"]

    def answer_topk(self, image: Image.Image, question: str, k: int = 3) -> list[list[tuple[str, float]]]:
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        return [[("red", 0.9), ("blue", 0.07), ("green", 0.03)][:k]]


class FakeChat(FakeVQA):
    architecture = "fake_chat"
    answer = answer_topk = None  # type: ignore[assignment]  # a chat model only

    def chat(self, image: Image.Image, messages: list[dict[str, str]]) -> str:
        return f"a red circle ({len(messages)} messages)"


class FakeIndex:
    paths = ["/data/a.png", "/data/b.png"]

    def search(self, query: Any, k: int = 5) -> list[tuple[str, float]]:
        return [("/data/b.png", 0.8), ("/data/a.png", 0.1)][:k]


@pytest.fixture(scope="module")
def captioner() -> Any:
    return tiny_model()


@pytest.fixture(scope="module")
def client(captioner: Any) -> Any:
    config = ServeConfig(limits=Limits(max_bytes=2 * 2**20, max_pixels=1000 * 1000), max_batch=8, max_wait_ms=20)
    with TestClient(create_app({"tiny": captioner}, config=config)) as c:
        yield c


def caption(client: TestClient, data: bytes, name: str = "a.png", field: str = "image", **form: Any) -> Any:
    return client.post("/v1/caption", files={field: (name, data, "image/png")},
                       data={k: str(v) for k, v in form.items()})


def test_caption_multipart_nbest_scores_and_heatmaps(client: TestClient, captioner: Any) -> None:
    r = caption(client, png_bytes(), beam_size=3, nbest=3, heatmaps="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and len(body["captions"]) == 3 and (body["width"], body["height"]) == (48, 40)
    scores = [c["score"] for c in body["captions"]]
    assert scores == sorted(scores, reverse=True)
    assert body["captions"][0]["text"] == " ".join(body["words"])
    assert len(body["heatmaps"]) == len(body["words"]) > 0
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmaps"][0])))
    assert overlay.format == "PNG" and overlay.size[0] == overlay.size[1]
    expected = captioner.caption_nbest([Image.open(io.BytesIO(png_bytes()))], beam_size=3, num_return_sequences=3)
    assert [c["text"] for c in body["captions"]] == expected[0]


def test_caption_json_base64_matches_multipart(client: TestClient) -> None:
    data = png_bytes(colour=(20, 200, 90))
    multipart = caption(client, data, strategy="greedy").json()
    for encoded in (base64.b64encode(data).decode(), "data:image/png;base64," + base64.b64encode(data).decode()):
        r = client.post("/v1/caption", json={"image": encoded, "strategy": "greedy"})
        assert r.status_code == 200, r.text
        assert r.json()["captions"] == multipart["captions"] and r.json()["heatmaps"] is None


@pytest.mark.parametrize(("data", "name", "status", "message"), [
    (b"", "empty.png", 400, "empty upload"),
    (b"PK\x03\x04" + bytes(100), "photos.png", 415, "not an image (a ZIP archive)"),
    (b"<!doctype html><script>alert(1)</script>", "page.png", 415, "not an image (HTML"),
    (png_bomb_header(), "bomb.png", 413, "pixels"),
    (png_bomb_header(2000, 2000), "big.png", 413, "over the limit of 1,000,000"),
    (png_bytes()[:60], "truncated.png", 422, "corrupt"),
    (bytes(20 * 2**20), "huge.png", 413, "over the 2.0 MB limit"),
])
def test_bad_uploads_get_a_clear_4xx(client: TestClient, data: bytes, name: str, status: int, message: str) -> None:
    r = caption(client, data, name=name)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/healthz").json()["status"] == "ok"
    assert caption(client, png_bytes()).status_code == 200  # still serving


def test_body_over_the_limit_is_refused_while_streaming(client: TestClient) -> None:
    sent = []

    def chunks():  # no Content-Length: the server must count as it reads and stop early
        for _ in range(64):
            sent.append(1)
            yield bytes(256 * 1024)

    r = client.post("/v1/caption", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(("request_kwargs", "status", "message"), [
    ({"files": {"file": ("a.png", png_bytes(), "image/png")}}, 422, "no file field named 'image' (got file field 'file')"),
    ({"json": {"beam_size": 3}}, 422, "no image"),
    ({"data": {"image": "hello"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 422, "must be a file upload"),
    ({"json": {"image": "%%%not base64%%%"}}, 422, "not valid base64"),
    ({"json": {"image": base64.b64encode(png_bytes()).decode(), "beam_size": "abc"}}, 422, "field 'beam_size'"),
    ({"json": {"image": base64.b64encode(png_bytes()).decode(), "beam": 3}}, 422, "field 'beam': unknown field"),
    ({"json": {"image": base64.b64encode(png_bytes()).decode(), "nbest": 5, "beam_size": 2}}, 422,
     "nbest (5) cannot exceed beam_size (2)"),
    ({"json": {"image": 42}}, 422, "'image' must be a base64 string"),
    ({"json": [1, 2]}, 422, "JSON body must be an object"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported Content-Type"),
])
def test_invalid_requests(client: TestClient, request_kwargs: dict, status: int, message: str) -> None:
    r = client.post("/v1/caption", **request_kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_uploads_stay_in_memory(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import starlette.formparsers

    class NoDisk(starlette.formparsers.SpooledTemporaryFile):  # type: ignore[misc,name-defined]
        def rollover(self) -> None:
            raise AssertionError("an upload was written to a temporary file")

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", NoDisk)
    noise = Image.frombytes("RGB", (700, 700), bytes(random.Random(0).randbytes(700 * 700 * 3)))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert buffer.tell() > 1024 * 1024  # over starlette's default 1 MB spool
    assert caption(client, buffer.getvalue()).status_code == 200


def test_exif_orientation_is_applied_and_nothing_is_kept(client: TestClient) -> None:
    image = Image.new("RGB", (60, 20), (250, 250, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright image is 20 x 60
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    r = client.post("/v1/caption", files={"image": ("photo.jpg", buffer.getvalue(), "image/jpeg")})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (20, 60)


def test_endpoints_without_a_model_say_so(client: TestClient) -> None:
    data = base64.b64encode(png_bytes()).decode()
    r = client.post("/v1/vqa", json={"image": data, "question": "what colour?"})
    assert r.status_code == 404 and "no loaded model supports vqa" in r.json()["error"]
    r = client.post("/v1/chat", json={"image": data, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and "no loaded model supports chat" in r.json()["error"]
    r = client.post("/v1/retrieve", json={"text": "a red circle"})
    assert r.status_code == 404 and "--index" in r.json()["error"]
    r = caption(client, png_bytes(), model="nope")
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]
    assert client.get("/v1/unknown").status_code == 404


def test_models_health_docs_and_page(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["models"][0] | {"parameters": 0} == {"name": "tiny", "architecture": "captioner", "tasks": ["caption"],
                                                       "image_size": 32, "parameters": 0, "attention": True,
                                                       "controls": []}
    assert models["index"] is None and models["limits"]["max_bytes"] == 2 * 2**20
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == 1
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "polymodal" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


def test_vqa_chat_and_streaming_with_duck_typed_models(captioner: Any) -> None:
    models = {"cap": captioner, "vqa": FakeVQA(), "chat": FakeChat()}
    with TestClient(create_app(models, index=FakeIndex())) as c:
        info = {m["name"]: m["tasks"] for m in c.get("/v1/models").json()["models"]}
        assert info == {"cap": ["caption"], "vqa": ["vqa"], "chat": ["chat"]}
        r = c.post("/v1/vqa", files={"image": ("a.png", png_bytes(), "image/png")},
                   data={"question": "what colour is it?", "k": "2"})
        assert r.status_code == 200 and r.json()["answers"] == [{"answer": "red", "score": 0.9},
                                                                {"answer": "blue", "score": 0.07}]
        messages = [{"role": "user", "content": "what is it?"}, {"role": "assistant", "content": "a circle"},
                    {"role": "user", "content": "what colour?"}]
        image = base64.b64encode(png_bytes()).decode()
        r = c.post("/v1/chat", json={"image": image, "messages": messages})
        assert r.json()["message"] == {"role": "assistant", "content": "a red circle (3 messages)"}
        with c.stream("POST", "/v1/chat", files={"image": ("a.png", png_bytes(), "image/png")},
                      data={"messages": json.dumps(messages), "stream": "true"}) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            events = [e for e in s.read().decode().split("\n\n") if e]
        tokens = [json.loads(e.split("data: ")[1])["token"] for e in events if e.startswith("event: token")]
        assert tokens == ["a", "red", "circle", "(3", "messages)"] and events[-1].startswith("event: done")
        bad = c.post("/v1/chat", json={"image": image, "messages": [{"role": "assistant", "content": "hi"}]})
        assert bad.status_code == 422 and "last message must be the user's" in bad.json()["error"]
        r = c.post("/v1/retrieve", json={"text": "a red circle", "k": 1})
        assert r.status_code == 200 and r.json()["hits"] == [{"id": 1, "path": "b.png", "score": 0.8}]
        assert c.post("/v1/retrieve", json={"k": 3}).status_code == 422
        assert c.get("/v1/index/7").status_code == 404


def test_index_thumbnails_and_image_queries(tmp_path: Path, captioner: Any) -> None:
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (300, 200), colour).save(paths[-1])
    index = FakeIndex()
    index.paths = paths
    index.search = lambda query, k=5: [(paths[0], 1.0)]  # type: ignore[method-assign]
    with TestClient(create_app({"cap": captioner}, index=index)) as c:
        assert c.get("/v1/models").json()["index"]["size"] == 2
        thumb = c.get("/v1/index/0")
        assert thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (256, 171)
        r = c.post("/v1/retrieve", files={"image": ("q.png", png_bytes(), "image/png")})
        assert r.status_code == 200 and r.json()["hits"][0]["id"] == 0 and r.json()["query"] == "<image>"


def test_concurrent_captions_share_a_batch_and_match_single_requests(captioner: Any) -> None:
    images = [png_bytes(colour=(40 * i, 255 - 30 * i, 90)) for i in range(6)]
    config = ServeConfig(max_batch=8, max_wait_ms=200)
    with TestClient(create_app({"tiny": captioner}, config=config)) as c:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda d: caption(c, d, nbest=2).json(), images))
        assert max(r["batch_size"] for r in results) > 1
        assert c.get("/healthz").json()["batching"]["largest_batch"] > 1
    alone = [captioner.caption_nbest([Image.open(io.BytesIO(d))], num_return_sequences=2)[0] for d in images]
    assert [[x["text"] for x in r["captions"]] for r in results] == alone


def test_batcher_groups_by_key() -> None:
    calls: list[tuple[str, list[int]]] = []

    def run(key: Any, items: list[int]) -> list[int]:
        calls.append((key, items))
        return [x * 10 for x in items]

    async def main() -> list[tuple[int, int]]:
        batcher = DynamicBatcher(run, ThreadPoolExecutor(1), max_batch=4, max_wait_ms=50)
        batcher.start()
        jobs = [batcher.submit("a" if i % 2 else "b", i) for i in range(6)]
        results = await asyncio.gather(*jobs)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results] == [0, 10, 20, 30, 40, 50]
    assert sorted(calls) == [("a", [1, 3, 5]), ("b", [0, 2, 4])]


def test_timeout_and_busy_are_503_504(captioner: Any) -> None:
    class Slow:
        architecture = "slow"

        def parameters(self) -> list[torch.Tensor]:
            return []

        def caption_nbest(self, images: list, **_: Any) -> list[list[str]]:
            time.sleep(0.5)
            return [["a slow caption"] for _ in images]

    with TestClient(create_app({"slow": Slow()}, config=ServeConfig(timeout_s=0.1))) as c:
        r = caption(c, png_bytes())
        assert r.status_code == 504 and "timed out" in r.json()["error"]
    with TestClient(create_app({"tiny": captioner}, config=ServeConfig(max_queue=0))) as c:
        r = caption(c, png_bytes())
        assert r.status_code == 503 and "busy" in r.json()["error"]


def test_loads_model_directories(tmp_path: Path, captioner: Any) -> None:
    captioner.save_pretrained(tmp_path / "shapes" / "model")
    with TestClient(create_app([tmp_path / "shapes" / "model"])) as c:
        assert c.get("/v1/models").json()["models"][0]["name"] == "shapes"
        assert caption(c, png_bytes()).status_code == 200


WORDS = "what colour is the circle square red blue green how many shapes".split()


def tiny_retrieval(folder: Path) -> tuple[Any, Path]:
    """A tiny dual encoder and an image index of three coloured squares written under `folder`."""
    torch.manual_seed(0)
    cfg = dual_encoder.DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, embed_dim=16,
                                 pooling="mean", text=TextEncoderConfig(name="lstm", width=16, layers=1, heads=2))
    encoder = dual_encoder.DualEncoder(cfg, WordTokenizer([*SPECIALS, *WORDS])).eval()
    (folder / "photos").mkdir(parents=True)
    for i, colour in enumerate([(230, 30, 30), (40, 90, 255), (30, 190, 50)]):
        Image.new("RGB", (40, 40), colour).save(folder / "photos" / f"{i}.png")
    index, _ = retrieval.build_image_index(encoder, folder / "photos", progress=False)
    return encoder, index.save(folder / "photos.index")


def test_real_vqa_chat_and_retrieval_models(tmp_path: Path, captioner: Any) -> None:
    """The duck typing against the project's own models: VQA, chat assistant, dual encoder + index."""
    torch.manual_seed(0)
    small = EncoderConfig(name="small_cnn", width=8)
    question = vqa.QuestionEncoderConfig(embed_dim=8, hidden_dim=16, max_len=12)
    answerer = vqa.VQAModel(vqa.VQAModelConfig(encoder=small, question=question, image_size=32, dim=16,
                                               fusion=FusionConfig(dim=16, hidden=16, heads=2)),
                            WordTokenizer([*SPECIALS, *WORDS]), ["red", "blue", "green"]).eval()
    assistant = chat.Assistant(chat.ChatModelConfig(encoder=small, image_size=32, dim=16, heads=2, grounding_layers=1,
                                                    embed_dim=8, hidden_dim=16, attention_dim=8, context=question),
                               WordTokenizer([*SPECIALS, USER, ASSISTANT, *WORDS])).eval()
    encoder, index = tiny_retrieval(tmp_path)

    models = {"cap": captioner, "vqa": answerer, "chat": assistant, "dual": encoder}
    with TestClient(create_app(models, index=index)) as c:
        listed = c.get("/v1/models").json()
        assert {m["name"]: m["tasks"] for m in listed["models"]} == {
            "cap": ["caption"], "vqa": ["vqa"], "chat": ["chat"], "dual": ["retrieve"]}
        assert listed["index"]["size"] == 3 and listed["index"]["kind"] == "image"
        image = base64.b64encode(png_bytes()).decode()
        r = c.post("/v1/vqa", json={"image": image, "question": "what colour is the circle?", "k": 2})
        assert r.status_code == 200, r.text
        answers = r.json()["answers"]
        assert len(answers) == 2 and {a["answer"] for a in answers} <= {"red", "blue", "green"}
        r = c.post("/v1/chat", json={"image": image, "messages": [{"role": "user", "content": "how many shapes?"}]})
        assert r.status_code == 200 and isinstance(r.json()["message"]["content"], str)
        assert r.json()["in_distribution"] is None  # saved without OOD statistics: not checked, and it says so
        r = c.post("/v1/retrieve", json={"text": "a red circle", "k": 3})
        hits = r.json()["hits"]
        assert r.status_code == 200 and sorted(h["id"] for h in hits) == [0, 1, 2]
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert c.get(f"/v1/index/{hits[0]['id']}").headers["content-type"] == "image/jpeg"
        r = c.post("/v1/retrieve", files={"image": ("q.png", png_bytes(), "image/png")}, data={"k": "1"})
        assert r.status_code == 200 and len(r.json()["hits"]) == 1


def test_cli_serve_binds_loopback_by_default(tmp_path: Path, captioner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from polymodal.cli import app as cli

    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda web, **kw: started.update(kw, app=web))
    captioner.save_pretrained(tmp_path / "tiny")
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "tiny"), "--max-batch", "4", "--max-mb", "1"])
    assert result.exit_code == 0, result.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8000 and "serving tiny" in result.output
    service = started["app"].state.service
    assert service.batcher.max_batch == 4 and service.limits.max_bytes == 2**20
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "tiny"), "--host", "0.0.0.0"])
    assert "warning: binding 0.0.0.0" in result.output


class CountdownSession:
    """A fake continuous batch: item n ends after n steps; records who was in each step."""

    def __init__(self, log: list[list[int]]):
        self.live: dict[Any, list[int]] = {}
        self.log = log

    def __len__(self) -> int:
        return len(self.live)

    def add(self, items: list[int], keys: list[Any]) -> None:
        for item, key in zip(items, keys, strict=True):
            self.live[key] = [item, item]

    def advance(self) -> list[tuple[Any, int]]:
        time.sleep(0.01)
        self.log.append(sorted(item for item, _ in self.live.values()))
        for entry in self.live.values():
            entry[1] -= 1
        ended = [(key, item * 10) for key, (item, left) in self.live.items() if left <= 0]
        for key, _ in ended:
            del self.live[key]
        return ended


def test_continuous_batching_admits_requests_between_steps_and_answers_each_when_done() -> None:
    steps: list[list[int]] = []
    whole: list[tuple[str, list[int]]] = []

    async def main() -> list[tuple[int, int]]:
        batcher = DynamicBatcher(lambda key, items: whole.append((key, items)) or [x * 10 for x in items],
                                 ThreadPoolExecutor(1), max_batch=3, max_wait_ms=0,
                                 open_session=lambda key: CountdownSession(steps) if key == "beam" else None)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("beam", 8))
        await asyncio.sleep(0.035)  # the first request is a few steps in
        later = [asyncio.ensure_future(batcher.submit("beam", n)) for n in (2, 3, 4)]
        while not any(4 in step for step in steps):  # 4 joins once 2 has left (at most 3 at once)
            await asyncio.sleep(0.002)
        other = asyncio.ensure_future(batcher.submit("greedy", 5))  # another key: after the batch drains
        results = await asyncio.gather(first, *later, other)
        await batcher.stop()
        assert batcher.stats.as_dict()["requests"] == 5 and batcher.stats.largest == 3
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results] == [80, 20, 30, 40, 50]
    assert steps[0] == [8] and [2, 3, 8] in steps  # 2 and 3 joined the running batch
    assert max(map(len, steps)) == 3
    joined = next(step for step in steps if 4 in step)
    assert 2 not in joined and 8 in joined  # 4 waited for room, then joined while 8 still ran
    assert whole == [("greedy", [5])]  # no session for that key: one whole batch, after the beam batch
    assert results[0][1] == 3 and results[4][1] == 1  # batch_size: the most requests decoded alongside


def test_whole_and_continuous_batching_give_the_same_captions(captioner: Any) -> None:
    images = [png_bytes(colour=(30 * i, 200 - 20 * i, 60 + 10 * i)) for i in range(5)]
    answers = []
    for continuous in (False, True):
        with TestClient(create_app({"tiny": captioner}, config=ServeConfig(max_batch=4, continuous=continuous))) as c:
            with ThreadPoolExecutor(5) as pool:
                answers.append(list(pool.map(lambda d: caption(c, d, nbest=2, beam_size=3).json(), images)))
    assert [[x["text"] for x in r["captions"]] for r in answers[0]] == \
        [[x["text"] for x in r["captions"]] for r in answers[1]]
    assert all(r["batch_size"] <= 4 for r in answers[1])


def test_continuous_batching_drops_requests_that_gave_up_while_waiting() -> None:
    steps: list[list[int]] = []

    async def main() -> tuple[int, int]:
        batcher = DynamicBatcher(lambda key, items: [x * 10 for x in items], ThreadPoolExecutor(1), max_batch=1,
                                 max_wait_ms=0, open_session=lambda key: CountdownSession(steps))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("beam", 5))
        await asyncio.sleep(0.02)
        waiting = asyncio.ensure_future(batcher.submit("beam", 3))  # no room: it waits to join
        await asyncio.sleep(0.01)
        waiting.cancel()  # the client gave up (a timeout)
        assert (await first)[0] == 50
        result = await asyncio.wait_for(batcher.submit("beam", 2), 5)  # the batcher is not stuck
        await batcher.stop()
        return result

    assert asyncio.run(main())[0] == 20
    assert all(3 not in step for step in steps) and len(steps) < 20
