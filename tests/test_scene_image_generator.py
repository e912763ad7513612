"""The planning text -> image generator: plans from scenes, the plan grammar, the sprite renderer, learning, saving."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

import polymodal
from polymodal.data.scene_plan import (
    ScenePlan,
    background_level,
    fit_levels,
    parse_plan,
    plan_tokens,
    plan_words,
    planned_object,
    scene_plan,
)
from polymodal.data.shapes import Scene, ShapeObject, render, sample_scene
from polymodal.errors import ConfigError, InputError
from polymodal.models.scene_image_generator import SceneImageConfig, SceneImageGenerator, plan_batch
from polymodal.nn.sprites import SpriteConfig, SpriteRenderer
from polymodal.text.tokenizer import WordTokenizer

CAPTIONS = ["a small red circle", "a large blue square", "a small red circle to the left of a large blue square"]


def tiny(grid: int = 16, size: int = 32, seed: int = 0, **overrides) -> SceneImageGenerator:
    torch.manual_seed(seed)
    cfg = SceneImageConfig(image_size=size, width=32, layers=2, heads=2, grid=grid, max_objects=2,
                           renderer=SpriteConfig(dim=16, channels=(32, 16, 16)), background_levels=[40.0],
                           **overrides)
    words = WordTokenizer.build(CAPTIONS).words
    return SceneImageGenerator(cfg, WordTokenizer([*words, *plan_tokens(grid, 1)]))


def test_a_scene_plan_holds_each_object_and_its_bounding_square():
    rng = random.Random(0)
    for _ in range(50):
        scene = sample_scene(rng)
        plan = scene_plan(scene, [30.0, 45.0, 60.0])
        assert parse_plan(plan_words(plan)) == plan
        assert plan.background == background_level(scene.background, [30.0, 45.0, 60.0])
        xs = [o.box()[0] for o in plan.objects]
        assert xs == sorted(xs)  # reading order, as captions list them
        for obj, want in zip(plan.objects, sorted(scene.objects, key=lambda o: (o.x, o.y)), strict=True):
            cx, cy, w, h = obj.box()
            assert obj.phrase == (want.size, want.colour, want.shape)
            assert abs(cx - want.x) <= 1 / 64 and abs(cy - want.y) <= 1 / 64
            assert abs(w - 2 * want.radius) <= 1 / 64 and w == h


def test_plans_name_the_objects_in_the_order_the_caption_does():
    circle, square = ShapeObject("circle", "red", "small", 0.2, 0.7), ShapeObject("square", "blue", "large", 0.6, 0.2)
    scene = Scene((circle, square), (40, 40, 40))

    def order(caption: str) -> list[str]:
        return [o.phrase[2] for o in scene_plan(scene, [40.0], caption=caption).objects]

    assert order("a large blue square above a small red circle") == ["square", "circle"]
    assert order("a red circle below a blue square") == ["circle", "square"]
    assert order("there are two shapes") == order("") == ["circle", "square"]  # unnamed: left to right
    assert order("a blue square") == ["square", "circle"]  # the named first, the rest after
    twins = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("circle", "red", "large", 0.7, 0.5)),
                  (40, 40, 40))
    sizes = [o.phrase[0] for o in scene_plan(twins, [40.0], caption="a large red circle and a small red circle").objects]
    assert sizes == ["large", "small"]


def test_parse_plan_refuses_what_the_grammar_cannot_write():
    with pytest.raises(ValueError, match="background"):
        parse_plan(["<obj>", "red", "<w1>", "<h1>", "<x1>", "<y1>"])
    with pytest.raises(ValueError, match="needs words"):
        parse_plan(["<bg0>", "<obj>", "<w1>", "<h1>", "<x1>", "<y1>"])
    with pytest.raises(ValueError, match="needs words"):
        parse_plan(["<bg0>", "<obj>", "red", "<w1>", "<x1>", "<h1>", "<y1>"])
    assert parse_plan(["<bg2>"]) == ScenePlan(2, ())


def test_background_levels_are_quantiles_and_the_nearest_is_chosen():
    levels = fit_levels([(v, v, v) for v in range(100)], 4)
    assert levels == sorted(levels) and len(levels) == 4 and 10 <= levels[0] <= 15 and 85 <= levels[-1] <= 90
    assert background_level((0, 0, 3), levels) == 0 and background_level((99, 99, 99), levels) == 3


@pytest.mark.parametrize("box", [None, (0.5, 0.5, 1.0, 1.0), (0.1, 0.2, 0.45, 0.6)])
def test_sampled_plans_are_well_formed_and_keep_every_object_inside_the_box(box):
    model = tiny(guidance=1.0)
    plans = model.sample_plans(["a red circle"], n=24, seed=3, guidance=2.0, box=box)
    x0, y0, x1, y1 = box or (0.0, 0.0, 1.0, 1.0)
    slack = 0.5 / model.cfg.grid + 1e-6
    assert len(plans) == 24 and all(1 <= len(p.objects) <= 2 for p in plans)
    for plan in plans:
        for obj in plan.objects:
            cx, cy, w, h = obj.box(model.cfg.grid)
            assert 1 <= len(obj.phrase) <= model.cfg.max_phrase
            if w <= x1 - x0 and h <= y1 - y0:  # a box too small for the object keeps its centre in the middle
                assert x0 - slack <= cx - w / 2 and cx + w / 2 <= x1 + slack
                assert y0 - slack <= cy - h / 2 and cy + h / 2 <= y1 + slack


def test_candidates_draw_the_likeliest_of_several_plans():
    one, four = tiny(), tiny(candidates=4)  # the same weights (same seed)
    best = four.sample_plans(["a red circle"], n=1, seed=2, guidance=2.0)
    ranked = one.sample_plans(["a red circle"], n=4, seed=2, guidance=2.0)  # the same 4 samples, best first
    assert best == ranked[:1]
    assert len(four.sample_plans(["a red circle"], n=3, seed=2, guidance=2.0)) == 3
    with pytest.raises(ConfigError, match="candidates"):
        tiny(candidates=0)


def test_the_renderer_draws_a_sprite_only_around_its_box():
    torch.manual_seed(0)
    renderer = SpriteRenderer(SpriteConfig(dim=8, channels=(8, 8)), vocab=6, levels=[40.0, 200.0])
    box = torch.tensor([[[0.25, 0.25, 0.2, 0.2]]])
    image = renderer(torch.tensor([[[4, 5]]]), box, torch.tensor([[True]]), torch.tensor([1]), size=32)[0]
    background = torch.tensor(200.0) / 127.5 - 1
    far = image[:, 20:, :].flatten(1)  # the lower part: well outside the sprite's reach (box * margin)
    assert torch.allclose(far, background.expand_as(far))
    assert not torch.allclose(image[:, 6:10, 6:10], background.expand(3, 4, 4))
    absent = renderer(torch.tensor([[[4, 5]]]), box, torch.tensor([[False]]), torch.tensor([0]), size=32)[0]
    assert torch.allclose(absent, (torch.tensor(40.0) / 127.5 - 1).expand_as(absent))


def _batch(model: SceneImageGenerator, scenes: list[Scene], captions: list[str]) -> dict[str, torch.Tensor]:
    tok, cfg = model.tokenizer, model.cfg
    plans = [scene_plan(s, cfg.background_levels, cfg.grid) for s in scenes]
    plan_ids = [torch.tensor([tok.index[w] for w in plan_words(p)] + [tok.eos_id]) for p in plans]
    pixels = torch.stack([torch.from_numpy(np.array(render(s, cfg.image_size))).permute(2, 0, 1) for s in scenes])
    return {"tokens": torch.nn.utils.rnn.pad_sequence(
                [torch.tensor([tok.bos_id, *tok.encode(c), tok.eos_id]) for c in captions], batch_first=True),
            "plan": torch.nn.utils.rnn.pad_sequence(plan_ids, batch_first=True),
            "pixels": pixels.float() / 127.5 - 1, **plan_batch(plans, tok, cfg.grid, cfg.max_phrase)}


@pytest.fixture(scope="module")
def learned() -> SceneImageGenerator:
    """Two scenes, one caption each, learnt to the point of being drawn from the caption alone."""
    model = tiny(cond_drop=0.0)
    scenes = [Scene((ShapeObject("circle", "red", "small", 0.25, 0.5),), (40, 40, 40)),
              Scene((ShapeObject("square", "blue", "large", 0.7, 0.3),), (40, 40, 40))]
    batch = _batch(model, scenes, CAPTIONS[:2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        _, losses = model(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert float(losses["plan_loss"]) < 0.1 and float(losses["render_loss"]) < 0.02
    return model.eval()


def _colour_centre(image, rgb: tuple[int, int, int]) -> tuple[float, float] | None:
    arr = np.asarray(image).astype(float)
    near = np.abs(arr - np.array(rgb)).sum(-1) < 120
    if near.sum() < 4:
        return None
    ys, xs = np.nonzero(near)
    return (xs.mean() + 0.5) / arr.shape[1], (ys.mean() + 0.5) / arr.shape[0]


def test_a_learnt_generator_draws_what_the_caption_says_where_the_scene_had_it(learned):
    plans = learned.sample_plans(["a small red circle"], n=4, seed=0, guidance=1.0, temperature=0.3)
    assert all([o.phrase for o in p.objects] == [("small", "red", "circle")] for p in plans)
    red = _colour_centre(learned.generate_images("a small red circle", seed=0)[0], (230, 30, 30))
    blue = _colour_centre(learned.generate_images("a large blue square", seed=0)[0], (40, 90, 255))
    assert red is not None and abs(red[0] - 0.25) < 0.08 and abs(red[1] - 0.5) < 0.08
    assert blue is not None and abs(blue[0] - 0.7) < 0.08 and abs(blue[1] - 0.3) < 0.08


def test_a_box_moves_the_object_into_it(learned):
    image = learned.generate_images("a small red circle", seed=0, box=(0.6, 0.6, 1.0, 1.0))[0]
    red = _colour_centre(image, (230, 30, 30))
    assert red is not None and red[0] > 0.6 and red[1] > 0.6
    assert learned.trained_controls == ("box",)  # always strict: the page offers no "strictly" for it
    again = learned.generate_images("a small red circle", seed=0, box=(0.6, 0.6, 1.0, 1.0), strict_box=True)[0]
    assert (np.asarray(again) == np.asarray(image)).all()


def test_the_cli_draws_in_a_box_and_refuses_a_bad_one(learned, tmp_path, monkeypatch, capsys):
    from .conftest import polymodal_cli

    learned.save_pretrained(tmp_path / "gen")
    code, out, _ = polymodal_cli(monkeypatch, capsys, "generate", str(tmp_path / "gen"), "a small red circle",
                                 "--n", "2", "--box", "0.6,0.6,1,1", "--out", str(tmp_path / "out"), "--quiet")
    assert code == 0 and "wrote 2 images" in out
    red = _colour_centre(Image.open(tmp_path / "out" / "image_00.png"), (230, 30, 30))
    assert red is not None and red[0] > 0.6 and red[1] > 0.6
    code, _, err = polymodal_cli(monkeypatch, capsys, "generate", str(tmp_path / "gen"), "a small red circle",
                                 "--box", "0.6,0.6,0.6,1", "--out", str(tmp_path / "out2"))
    assert code == 2 and "zero area" in err and "Traceback" not in err


def test_saved_and_loaded_it_draws_the_same_images(learned, tmp_path):
    learned.save_pretrained(tmp_path / "gen")
    again = polymodal.load(tmp_path / "gen")
    assert isinstance(again, SceneImageGenerator)
    a = [np.asarray(im) for im in learned.generate_images(["a small red circle", "a large blue square"], n=2, seed=5)]
    b = [np.asarray(im) for im in again.generate_images(["a small red circle", "a large blue square"], n=2, seed=5)]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"texts": ""}, "empty prompt"), ({"texts": "zzz qqq"}, "no word"), ({"texts": "a red circle", "n": 0}, "n=0"),
    ({"texts": "a red circle", "steps": 3}, "steps=3"), ({"texts": "a red circle", "guidance": -1.0}, "guidance"),
    ({"texts": "a red circle", "box": (0.5, 0.5, 0.5, 0.9)}, "zero area"),
    ({"texts": "a red circle", "strict_box": True}, "needs a box")])
def test_bad_requests_get_one_line_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        tiny().generate_images(**kwargs)


def test_planned_object_clamps_to_the_raster():
    obj = planned_object(("red",), 1.2, -0.1, 2.0, 0.0, grid=8)
    assert (obj.x, obj.y, obj.w, obj.h) == (7, 0, 7, 0)


def test_the_training_task_trains_saves_and_needs_scene_annotations(tmp_path):
    from polymodal.train.tasks import load_task_config

    overrides = ["data.n=40", "train.steps=3", "train.batch_size=4", "train.eval_every=3", "val_images=4",
                 f"train.out_dir={tmp_path / 'run'}", "model.width=16", "model.layers=1", "model.heads=2",
                 "model.image_size=32", "model.grid=16", "model.renderer.dim=8", "model.renderer.channels=[8,8,8]",
                 "backgrounds=2"]
    task, cfg = load_task_config("configs/text_to_image.yaml", overrides)
    summary = task(cfg, progress=False)
    assert summary["step"] == 3 and summary["vocab_size"] > 4 * 16  # the words, then the plan tokens
    model = polymodal.load(tmp_path / "run" / "model")
    assert isinstance(model, SceneImageGenerator) and len(model.cfg.background_levels) == 2
    assert model.generate_images("a red circle", n=2, seed=0)[0].size == (32, 32)
    task, cfg = load_task_config("configs/text_to_image.yaml", ["data.format=jsonl", "data.path=x.jsonl"])
    with pytest.raises(ConfigError, match="needs instances=FILE"):
        task(cfg, progress=False)


def test_any_captioned_data_with_a_coco_instances_file_trains_a_planner(tmp_path):
    """COCO-style captions + instances (a wide image, boxes in pixels): plans come from the instances' boxes."""
    import json

    from polymodal.data.instances import read_instances
    from polymodal.train.tasks import load_task_config

    rng, images, captions, annotations = random.Random(1), [], [], []
    categories = [{"id": k, "name": f"{c} {s}"} for k, (c, s) in enumerate([("red", "circle"), ("blue", "square")])]
    for i in range(12):
        scene = Scene((ShapeObject("circle", "red", "small", rng.uniform(0.2, 0.4), 0.5),
                       ShapeObject("square", "blue", "large", rng.uniform(0.6, 0.8), 0.5)), (40, 40, 40))
        wide = Image.new("RGB", (96, 64), (40, 40, 40))
        wide.paste(render(scene, 64), (16, 0))  # the centre square of a 96 x 64 image
        wide.save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 96, "height": 64, "split": "val" if i >= 9 else "train"})
        captions.append({"image_id": i, "caption": "a blue square to the right of a red circle"})
        for k, o in enumerate(scene.objects if i != 11 else ()):  # image 11: nothing annotated
            side = 2 * o.radius * 64
            annotations.append({"image_id": i, "category_id": k, "bbox": [16 + o.x * 64 - side / 2, o.y * 64 - side / 2,
                                                                           side, side]})
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "categories": categories,
                                                         "annotations": annotations}))
    boxes = read_instances(tmp_path / "instances.json")["0"]
    assert [o.phrase for o in boxes] == [("red", "circle"), ("blue", "square")]
    assert abs(boxes[0].w - 0.2) < 1e-6 and 0.2 <= boxes[0].cx <= 0.4  # in the centre square's side
    overrides = ["data.format=coco", f"data.path={tmp_path / 'captions.json'}", f"instances={tmp_path / 'instances.json'}",
                 "train.steps=2", "train.batch_size=4", "train.eval_every=2", "val_images=4",
                 f"train.out_dir={tmp_path / 'run'}", "model.width=16", "model.layers=1", "model.heads=2",
                 "model.image_size=32", "model.grid=16", "model.renderer.dim=8", "model.renderer.channels=[8,8,8]",
                 "backgrounds=2"]
    task, cfg = load_task_config("configs/text_to_image.yaml", overrides)
    summary = task(cfg, progress=False)
    assert summary["skipped_records"] == 1 and summary["train_pairs"] == 9  # image 11 has no object
    model = polymodal.load(tmp_path / "run" / "model")
    assert "square" in model.tokenizer.index and model.generate_images("a red circle", seed=0)[0].size == (32, 32)
