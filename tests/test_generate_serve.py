"""POST /v1/generate: a text-to-image model draws through the server; bad fields are 422, no generator is 404."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.serve.app import create_app

from .test_cli_matrix import _text_to_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app({"tiny-drawer": _text_to_image().eval()})) as c:
        yield c


def test_generate_draws_n_images_the_same_for_a_seed(client):
    body = {"prompt": "a red circle and a zebra", "n": 2, "steps": 2, "seed": 3}  # "zebra": not in its vocabulary
    first, again = client.post("/v1/generate", json=body).json(), client.post("/v1/generate", json=body).json()
    assert first["model"] == "tiny-drawer" and len(first["images"]) == 2 and first["images"] == again["images"]
    assert first["unknown_words"] == ["zebra"]
    image = Image.open(io.BytesIO(base64.b64decode(first["images"][0])))
    assert image.size == (16, 16) and image.mode == "RGB"
    info = client.get("/v1/models").json()
    assert info["models"][0]["tasks"] == ["generate"]


@pytest.mark.parametrize("body, field", [({"prompt": ""}, "prompt"), ({"prompt": "a red circle", "n": 0}, "n"),
                                         ({"prompt": "a red circle", "n": 9}, "n"),
                                         ({"prompt": "a red circle", "guidance": -1}, "guidance"),
                                         ({"prompt": "zebra giraffe", "steps": 2}, "zebra")])
def test_bad_requests_are_422_naming_the_field(client, body, field):
    reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 422 and field in reply.json()["error"]


def test_no_generator_is_404():
    from .test_cli_matrix import _asr

    with TestClient(create_app({"asr": _asr()})) as c:
        reply = c.post("/v1/generate", json={"prompt": "a red circle"})
    assert reply.status_code == 404 and "generate" in reply.json()["error"]
