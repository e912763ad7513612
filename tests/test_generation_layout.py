"""The layout box of the discrete text -> image generator (issue 21): box tokens, training from a trained generator
with its vocabulary grown, sampling with a box, and the box refused where it cannot be honoured (CLI, server)."""

from __future__ import annotations

import json

import pytest
import torch

import polymodal
from polymodal.data.layout import (
    background_codes,
    box_words,
    check_box,
    inside,
    layout_tokens,
    objects_box,
    outside_cells,
    untouched_cells,
)
from polymodal.data.shapes import Scene, ShapeObject
from polymodal.errors import InputError

from .conftest import polymodal_cli
from .test_text_to_image_tokens import TINY_TASK, one_line

pytestmark = pytest.mark.usefixtures("one_thread")


def test_box_words_cover_the_cells_the_box_reaches():
    assert box_words((0.0, 0.0, 1.0, 1.0)) == ["<box>", "<x0>", "<y0>", "<x7>", "<y7>"]
    assert box_words((0.1, 0.5, 0.25, 0.9)) == ["<box>", "<x0>", "<y4>", "<x1>", "<y7>"]  # 0.25 ends on a border
    assert box_words((0.5, 0.5, 0.6, 0.6), grid=4) == ["<box>", "<x2>", "<y2>", "<x2>", "<y2>"]
    assert set(box_words((0.2, 0.3, 0.7, 0.9))) <= set(layout_tokens())
    assert inside(0.3, 0.6, (0.1, 0.5, 0.4, 0.9)) and not inside(0.8, 0.6, (0.1, 0.5, 0.4, 0.9))


@pytest.mark.parametrize("box, fragment", [((0.1, 0.2, 0.3), "4 numbers"), ((0.1, 0.2, 1.3, 0.5), "outside the image"),
                                           ((0.4, 0.2, 0.4, 0.5), "zero area"), ((0.4, 0.6, 0.5, 0.5), "zero area")])
def test_bad_boxes_are_one_line_errors(box, fragment):
    with pytest.raises(InputError, match=fragment):
        check_box(box)


def test_objects_box_holds_every_object():
    scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.3), ShapeObject("square", "blue", "large", 0.7, 0.6)),
                  (40, 40, 40))
    x0, y0, x1, y1 = objects_box(scene.objects)
    for o in scene.objects:
        assert x0 <= o.x - o.radius + 1e-9 and o.x + o.radius <= x1 + 1e-9 or x1 == 1.0
        assert y0 <= o.y - o.radius + 1e-9 and o.y + o.radius <= y1 + 1e-9 or y1 == 1.0
    assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny generator, then the same one trained on with layout boxes (init_from)."""
    from polymodal.train.tasks import load_task_config

    tmp = tmp_path_factory.mktemp("layout")
    data = f"data.path={tmp / 'shapes'}"
    for config, extra in (("configs/text_to_image_tokens.yaml", [f"train.out_dir={tmp / 'plain'}"]),
                          ("configs/text_to_image_layout.yaml", [
                              f"train.out_dir={tmp / 'boxed'}", f"init_from={tmp / 'plain'}",
                              f"image_tokenizer={tmp / 'plain' / 'image_tokenizer' / 'model'}"])):
        task, cfg = load_task_config(config, [*TINY_TASK, data, *extra])
        task(cfg, progress=False)
    return tmp / "plain", tmp / "boxed"


def test_training_on_with_layouts_grows_the_vocabulary_and_keeps_the_codes(runs):
    plain, boxed = (polymodal.load(r) for r in runs)
    assert plain.cfg.layout_grid == 0 and boxed.cfg.layout_grid == 8
    words = boxed.tokenizer.words
    assert list(words[: plain.text_vocab]) == list(plain.tokenizer.words)
    assert set(layout_tokens()) <= set(words) and boxed.codes == plain.codes
    config = json.loads((runs[1] / "model" / "config.json").read_text())
    assert config["model"]["layout_grid"] == 8


def test_grown_generator_starts_where_the_old_one_was(runs):
    from polymodal.train.text_to_image_tokens import grown_generator

    plain = polymodal.load(runs[0])
    boxed = polymodal.load(runs[1])
    grown = grown_generator(plain, boxed.tokenizer, boxed.cfg)
    old, new = plain.lm.wte.weight, grown.lm.wte.weight
    assert torch.equal(new[: plain.text_vocab], old[: plain.text_vocab])  # the words
    assert torch.equal(new[grown.text_vocab:], old[plain.text_vocab:])    # the image codes, after the new words
    assert torch.equal(grown.lm.h[0].attn.c_attn.weight, plain.lm.h[0].attn.c_attn.weight)
    captions = plain.caption_ids(["a red circle"])
    assert torch.equal(grown.caption_ids(["a red circle"]), captions)  # the same ids for the same words


def test_a_box_is_read_after_the_caption(runs):
    model = polymodal.load(runs[1])
    layout = model.layout_ids((0.0, 0.5, 0.5, 1.0))
    ids = model.caption_ids(["a red circle"], layout)[0].tolist()
    tok = model.tokenizer
    assert ids[-6:] == [*layout, tok.eos_id] and [tok.words[i] for i in layout] == box_words((0.0, 0.5, 0.5, 1.0))
    first = model.generate_images("a red circle", n=2, seed=0, box=(0.0, 0.5, 0.5, 1.0))
    again = model.generate_images("a red circle", n=2, seed=0, box=(0.0, 0.5, 0.5, 1.0))
    assert len(first) == 2 and all(a.tobytes() == b.tobytes() for a, b in zip(first, again, strict=True))


def test_only_background_codes_are_written_outside_the_box(runs):
    model = polymodal.load(runs[1])
    slots = model.cfg.image.codes_per_cell
    assert len(model.cfg.outside_box_codes) == slots and all(model.cfg.outside_box_codes)  # fitted by the training
    box = (0.5, 0.5, 1.0, 1.0)
    codes = model.sample_codes(["a red circle"], 4, seed=0, guidance=3.0, layout=model.layout_ids(box), box=box)
    grid = model.image_tokenizer.grid
    outside = outside_cells(box, model.cfg.layout_grid, grid)
    assert sum(outside) == grid * grid * 3 // 4  # the box is the bottom-right quarter
    for image in codes.view(4, grid * grid, slots):
        for cell in (c for c in range(grid * grid) if outside[c]):
            assert all(int(image[cell, k]) in model.cfg.outside_box_codes[k] for k in range(slots))
    assert len(model.generate_images("a red circle", n=2, seed=0, box=box, strict_box=True)) == 2
    assert not model.outside_box_ban((0.0, 0.0, 1.0, 1.0)).any()  # a box over the whole image rules out nothing
    with pytest.raises(InputError, match="strict_box needs a box"):
        model.generate_images("a red circle", strict_box=True)


def test_background_codes_are_those_of_cells_no_object_reaches():
    scene = [ShapeObject("circle", "red", "large", 0.25, 0.25)]  # reaches into the top-left 2 x 2 cells of 4 x 4
    free = untouched_cells(scene, 4)
    assert [c for c in range(16) if not free[c]] == [0, 1, 4, 5]
    codes = torch.tensor([[7 if not free[c] else 3 for c in range(16)]])
    assert background_codes(codes, [scene], 4, 1, 10) == [[3]]
    assert background_codes(codes, [scene], 4, 1, 10, min_count=13) == [[]]  # seen 12 times only


def test_a_box_is_refused_where_it_cannot_be_honoured(runs, monkeypatch, capsys):
    plain = polymodal.load(runs[0])
    with pytest.raises(InputError, match="not trained with a layout box"):
        plain.generate_images("a red circle", box=(0.0, 0.0, 0.5, 0.5))
    for args, fragment in (((str(runs[0]), "a red circle", "--box", "0,0,0.5,0.5"), "not trained with a layout"),
                           ((str(runs[1]), "a red circle", "--box", "0,0,0.5"), "--box"),
                           ((str(runs[1]), "a red circle", "--box", "0.5,0,0.5,1"), "zero area")):
        code, _, err = polymodal_cli(monkeypatch, capsys, "generate", *args, "--quiet", "--out", "/tmp/never_written")
        lines = one_line(err)
        assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err


def test_server_takes_a_box(runs):
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    models = {"plain": polymodal.load(runs[0]), "boxed": polymodal.load(runs[1])}
    with TestClient(create_app(models)) as client:
        reply = client.post("/v1/generate", json={"model": "boxed", "prompt": "a red circle", "n": 1,
                                                  "box": [0.5, 0.5, 1.0, 1.0]})
        assert reply.status_code == 200 and len(reply.json()["images"]) == 1, reply.text
        for body, fragment in (({"model": "plain", "box": [0, 0, 0.5, 0.5]}, "layout box"),
                               ({"model": "boxed", "box": [0.5, 0, 0.5, 1]}, "zero area"),
                               ({"model": "boxed", "box": [0.5, 0, 1]}, "box")):
            reply = client.post("/v1/generate", json={"prompt": "a red circle", "n": 1, **body})
            assert reply.status_code == 422 and fragment in reply.text, (body, reply.text)
