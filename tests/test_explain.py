"""Explanations: the explainers find what a score depends on, the bundled models' outputs are explained on the
object they are about, and `polymodal explain` writes its files or says in one line what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

import polymodal
from polymodal.assets import BUNDLED_CAPTIONER, BUNDLED_DUAL_ENCODER, BUNDLED_VQA, bundled_model_dir
from polymodal.data.shapes import Scene, ShapeObject, render
from polymodal.errors import InputError
from polymodal.eval.explain import EXPLAINERS, explain, fill_cells, occlusion

from .test_cli_matrix import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
SCENE = Scene((ShapeObject("circle", "red", "large", 0.25, 0.25), ShapeObject("square", "blue", "large", 0.75, 0.75)),
              background=(40, 40, 40))


def test_fill_cells_fills_exactly_the_cells_given():
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    out = fill_cells(image, [0, 5], grid=4, baseline=torch.zeros(3, 1, 1))
    assert out[:, :2, :2].eq(0).all() and out[:, 2:4, 2:4].eq(0).all()
    assert torch.equal(out[:, 4:, :], image[:, 4:, :]) and torch.equal(out[:, :2, 2:], image[:, :2, 2:])


def test_every_explainer_finds_the_cell_a_linear_score_weighs():
    weight = torch.zeros(3, 16, 16)
    weight[:, 12:, 4:8] = 1.0  # only cell (3, 1) of a 4 x 4 grid counts
    image = torch.full((3, 16, 16), 0.5)
    image[:, 12:, 4:8] = 2.0  # brighter than the mean colour occlusion fills in

    def score(images: torch.Tensor) -> torch.Tensor:
        return (images * weight).sum((1, 2, 3))

    for explainer in EXPLAINERS.values():
        cells = explainer(score, image, grid=4)
        assert cells.shape == (4, 4) and int(cells.flatten().argmax()) == 3 * 4 + 1
    # for a linear score, what a cell shown alone keeps is exactly what hiding it costs
    assert torch.allclose(occlusion(score, image, grid=4, keep=True), occlusion(score, image, grid=4))


def test_showing_a_window_alone_finds_what_suffices_where_hiding_one_cell_cannot():
    image = torch.full((3, 16, 16), 0.5)
    image[:, 4:12, 4:12] = 2.0  # a large object over the 2 x 2 middle cells of a 4 x 4 grid

    def score(images: torch.Tensor) -> torch.Tensor:  # "is the object there": its brightest quarter is enough
        quarters = images[:, :, 4:12, 4:12].unfold(2, 4, 4).unfold(3, 4, 4).mean((1, 4, 5))
        return quarters.flatten(1).max(1).values

    hidden = occlusion(score, image, grid=4)
    assert hidden.abs().max() < 1e-6  # the other three quarters still show it: hiding one cell changes nothing
    cells = EXPLAINERS["deletion_preservation"](score, image, grid=4)
    assert set(cells.flatten().topk(4).indices.tolist()) == {5, 6, 9, 10}


@pytest.fixture(scope="module")
def scene():
    return render(SCENE, 64)


def test_a_vqa_answer_rests_on_the_object_and_the_word_it_is_about(scene):
    why = explain(polymodal.load(bundled_model_dir(BUNDLED_VQA)), scene, question="what shape is the blue object?")
    row, col = divmod(why.top_cells(1)[0], 8)
    assert why.output == "square" and row >= 4 and col >= 4  # the blue square is bottom right
    assert max(why.words, key=lambda w: w[1])[0] == "blue"
    data = why.to_dict()
    assert data["grid"] == 8 and len(data["regions"]) == 8 and data["kind"] == "vqa"


def test_a_search_match_and_a_caption_are_explained(scene):
    match = explain(polymodal.load(bundled_model_dir(BUNDLED_DUAL_ENCODER)), scene, text="a large red circle")
    row, col = divmod(match.top_cells(1)[0], 8)
    assert match.kind == "retrieval" and row < 4 and col < 4 and [w for w, _ in match.words][-1] == "circle"
    caption = explain(polymodal.load(bundled_model_dir(BUNDLED_CAPTIONER)), scene, grid=4)
    assert caption.kind == "caption" and "circle" in caption.output and caption.regions.shape == (4, 4)


def test_what_cannot_be_explained_is_one_clear_error(scene):
    vqa, dual = (polymodal.load(bundled_model_dir(n)) for n in (BUNDLED_VQA, BUNDLED_DUAL_ENCODER))
    with pytest.raises(InputError, match="does not answer questions"):
        explain(dual, scene, question="what colour is the circle?")
    with pytest.raises(InputError, match="give the text"):
        explain(dual, scene)
    with pytest.raises(InputError, match="did you mean 'occlusion'"):
        explain(vqa, scene, question="what colour is the circle?", method="oclusion")
    with pytest.raises(InputError, match="grid"):
        explain(vqa, scene, question="what colour is the circle?", grid=1)


def test_cli_writes_an_overlay_and_the_scores(scene, tmp_path):
    scene.save(tmp_path / "scene.png")
    code, out, err = run_cli(["explain", str(bundled_model_dir(BUNDLED_VQA)), str(tmp_path / "scene.png"),
                              "--question", "what colour is the circle?", "--out", str(tmp_path / "why")])
    assert code == 0, err
    assert out.startswith("vqa: red") and "colour +" in out
    data = json.loads((tmp_path / "why" / "explanation.json").read_text())
    assert data["output"] == "red" and data["method"] == "deletion_preservation"
    from PIL import Image

    assert Image.open(tmp_path / "why" / "overlay.png").size == (256, 256)
    code, out, err = run_cli(["explain", str(bundled_model_dir(BUNDLED_DUAL_ENCODER)), str(tmp_path / "scene.png"),
                              "--question", "what colour is the circle?", "--out", str(tmp_path / "no")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not answer questions" in err


def test_the_server_explains_answers_search_hits_and_captions(scene):
    import base64
    import io

    from fastapi.testclient import TestClient

    from polymodal.cli.serve import bundled_index, load_bundled
    from polymodal.serve.app import create_app

    png = io.BytesIO()
    scene.save(png, "PNG")
    upload = {"image": ("scene.png", png.getvalue(), "image/png")}
    models = load_bundled()
    with TestClient(create_app(models, index=bundled_index(models))) as client:
        answer = client.post("/v1/explain", files=upload, data={"question": "what colour is the circle?"}).json()
        hit = client.post("/v1/explain", json={"item": 0, "text": "a large red circle", "grid": 4}).json()
        caption = client.post("/v1/explain", files=upload).json()
        errors = [client.post("/v1/explain", json={"item": 0}),  # a hit needs the query
                  client.post("/v1/explain", json={"item": 10**6, "text": "a red circle"}),
                  client.post("/v1/explain", files=upload, data={"question": "what?", "method": "oclusion"}),
                  client.post("/v1/explain", files=upload, data={"grid": "1"})]
    assert answer["kind"] == "vqa" and answer["output"] == "red" and answer["model"] == "shapes_vqa"
    assert base64.b64decode(answer["overlay"])[:4] == b"\x89PNG" and len(answer["regions"]) == 8
    assert hit["kind"] == "retrieval" and hit["grid"] == 4 and hit["model"] == "index encoder"
    assert caption["kind"] == "caption" and "circle" in caption["output"]
    assert [e.status_code for e in errors] == [422, 404, 422, 422]
    assert "did you mean 'occlusion'" in errors[2].json()["error"]
