"""Text -> image: a tiny flow-matching generator trains, saves, reloads, samples deterministically; the CLI writes
PNGs and refuses bad input with one line; the GenEval-style grader reads rendered scenes right."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import polymodal
from polymodal.assets import ASSETS
from polymodal.data.shapes import Scene, ShapeObject, ShapesWorld, render, sample_scene
from polymodal.errors import InputError
from polymodal.eval.generation import ObjectParser, Prompt, grade, match_scene, prompt_groups
from polymodal.eval.generation_stats import frechet_distance, image_grid, nearest_distances, to_unit_tensor
from polymodal.models.text_to_image import TextToImage
from polymodal.train.tasks import load_task_config

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.image_size=16", "model.unet.channels=[8,16]", "model.unet.attention=[false,true]", "model.unet.heads=2",
        "model.text.width=16", "model.text.layers=1", "model.text.heads=2", "model.steps=3", "val_images=8",
        "data.n=40", "data.render_size=32", "train.batch_size=8", "train.steps=6", "train.eval_every=3",
        "train.checkpoint_every=0", "train.log_every=3", "train.warmup_steps=1", "ema_decay=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny generator trained 6 steps on a 40-image Shapes World; returns (run dir, training summary)."""
    tmp = tmp_path_factory.mktemp("t2i")
    task, cfg = load_task_config("configs/text_to_image_flow.yaml",
                                 [*TINY, f"data.path={tmp / 'shapes'}", f"train.out_dir={tmp / 'run'}"])
    summary = task(cfg, progress=False)
    return tmp / "run", summary


@pytest.fixture(scope="module")
def vqa():
    return polymodal.load(ASSETS / "shapes_vqa")


def test_trains_saves_and_reloads(trained):
    run, summary = trained
    assert summary["step"] == 6 and summary["train_pairs"] > 0
    assert np.isfinite(summary["final_loss"]) and summary["final_loss"] < 5
    model = polymodal.load(run)
    assert isinstance(model, TextToImage) and model.architecture == "text_to_image"
    assert (run / "model" / "model.safetensors").is_file() and not list(run.rglob("*.pt"))
    again = polymodal.load(run / "model")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_generate_images_deterministic_count_size_and_guidance(trained):
    model = polymodal.load(trained[0])
    a = model.generate_images(["a red circle", "a blue square"], n=3, seed=5, steps=3, guidance=2.0)
    b = model.generate_images(["a red circle", "a blue square"], n=3, seed=5, steps=3, guidance=2.0)
    assert len(a) == 6 and all(im.size == (16, 16) and im.mode == "RGB" for im in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    other_seed = model.generate_images("a red circle", n=1, seed=6, steps=3, guidance=2.0)[0]
    assert not np.array_equal(np.asarray(other_seed), np.asarray(a[0]))
    # with the caption ignored (guidance 0) two prompts give the same image; guided, they differ
    x0, y0 = model.generate_images(["a red circle", "a blue square"], n=1, seed=5, steps=3, guidance=0.0)
    assert np.array_equal(np.asarray(x0), np.asarray(y0))
    guided = model.generate_images("a red circle", n=1, seed=5, steps=3, guidance=4.0)[0]
    assert not np.array_equal(np.asarray(guided), np.asarray(x0))
    assert len(model.generate_images("a red circle", n=2, seed=0, steps=2, batch_size=1)) == 2


@pytest.mark.parametrize("kwargs, fragment", [
    ({"texts": ""}, "empty prompt"), ({"texts": "zebra giraffe"}, "no word this model knows"),
    ({"texts": "a " * 5000}, "characters"), ({"n": 0}, "n=0"), ({"n": 1000}, "n=1000"),
    ({"guidance": -1.0}, "guidance=-1.0"), ({"steps": 0}, "steps=0")])
def test_api_refuses_bad_requests(trained, kwargs, fragment):
    model = polymodal.load(trained[0])
    args = {"texts": "a red circle", "n": 1, "steps": 2, "guidance": 1.0, **kwargs}
    with pytest.raises(InputError, match=fragment.replace("(", r"\(")) as info:
        model.generate_images(**args)
    assert "\n" not in str(info.value)


def test_cli_writes_pngs_and_contact_sheet(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = polymodal_cli(monkeypatch, capsys, "generate", str(trained[0]),
                                         "a small red circle to the left of a large zebra", "--n", "3", "--seed", "0",
                                         "--steps", "2", "--guidance", "2", "--out", str(out), "--quiet")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "image_00.png", "image_01.png", "image_02.png"]
    assert "zebra" in stderr and "unknown" in stderr and "contact_sheet.png" in stdout


@pytest.mark.parametrize("args, fragment", [
    (["", "--n", "1"], "empty prompt"), (["zebra giraffe"], "no word"), (["a " * 5000], "characters"),
    (["a red circle", "--n", "0"], "n=0"), (["a red circle", "--n", "1000"], "n=1000"),
    (["a red circle", "--guidance", "-1"], "guidance=-1"), (["a red circle", "--model-is-vqa"], "not a text_to_image")])
def test_cli_bad_input_exits_2_with_one_line(trained, tmp_path, monkeypatch, capsys, args, fragment):
    model = str(ASSETS / "shapes_vqa") if "--model-is-vqa" in args else str(trained[0])
    args = [a for a in args if a != "--model-is-vqa"]
    code, stdout, stderr = polymodal_cli(monkeypatch, capsys, "generate", model, *args, "--out", str(tmp_path / "o"),
                                         "--quiet", "--steps", "2")
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in stderr, stderr
    assert not (tmp_path / "o").exists()


def test_grader_reads_rendered_scenes_exactly(vqa):
    world = ShapesWorld(n=200, seed=0, image_size=64)
    scenes = [world.scene(split, i) for split in ("test", "heldout") for i in range(20)]
    parsed = ObjectParser(vqa).parse([render(s, 64) for s in scenes])
    hits = [match_scene(s, p) for s, p in zip(scenes, parsed, strict=True)]
    assert sum(h for h, _ in hits) == sum(n for _, n in hits)  # every object: colour, shape, size, place
    assert all(len(p) == len(s.objects) for s, p in zip(scenes, parsed, strict=True))
    # every prompt made from a scene is fully correct on that scene's own rendering
    for scene, objs in zip(scenes, parsed, strict=True):
        for prompt in prompt_groups([scene]):
            assert grade(prompt, objs), (prompt, objs)


def test_grader_fails_wrong_images(vqa):
    red_left = Scene((ShapeObject("circle", "red", "large", 0.25, 0.5), ShapeObject("square", "blue", "small", 0.75, 0.5)),
                     (40, 40, 40))
    swapped = Scene((ShapeObject("circle", "red", "large", 0.75, 0.5), ShapeObject("square", "blue", "small", 0.25, 0.5)),
                    (40, 40, 40))
    recoloured = Scene((ShapeObject("circle", "blue", "large", 0.25, 0.5), ShapeObject("square", "red", "small", 0.75, 0.5)),
                       (40, 40, 40))
    prompts = {p.group: p for p in prompt_groups([red_left])}
    parser = ObjectParser(vqa)
    ok, wrong_place, wrong_colour = parser.parse([render(s, 64) for s in (red_left, swapped, recoloured)])
    assert grade(prompts["position"], ok) and not grade(prompts["position"], wrong_place)
    assert grade(prompts["attribute_binding"], ok) and not grade(prompts["attribute_binding"], wrong_colour)
    assert grade(prompts["two_objects"], wrong_colour)  # shapes alone are right
    single = Prompt("a large red circle", "single_object", (red_left.objects[0],))
    assert not grade(single, ok)  # two objects where one was asked for


def test_set_measures():
    images = [render(sample_scene(random.Random(i)), 32) for i in range(12)]
    pool = to_unit_tensor(images, 32)
    assert nearest_distances(images[:3], pool, size=32).max() < 1e-6
    assert nearest_distances(images[:3], pool[3:], size=32).min() > 0.01
    feats = torch.randn(64, 5, dtype=torch.float64)
    assert frechet_distance(feats, feats) < 1e-6 < frechet_distance(feats, feats + 1)
    assert image_grid(images, columns=4, pad=1).size == (4 * 33 + 1, 3 * 33 + 1)


def test_trains_on_a_jsonl_caption_file(tmp_path):
    """Any captioned data the readers take works through the same data.* keys (here JSONL with splits)."""
    import json

    (tmp_path / "img").mkdir()
    lines = []
    for i in range(10):
        scene = sample_scene(random.Random(i), max_objects=2)
        render(scene, 32).save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"picture {i} of shapes",
                                 "split": "val" if i >= 8 else "train"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    task, cfg = load_task_config("configs/text_to_image_flow.yaml", [
        *TINY, "data.format=jsonl", f"data.path={tmp_path / 'captions.jsonl'}", f"data.images={tmp_path / 'img'}",
        "train.steps=2", f"train.out_dir={tmp_path / 'run'}"])
    summary = task(cfg, progress=False)
    assert summary["train_pairs"] == 8 and summary["step"] == 2
    assert len(polymodal.load(tmp_path / "run").generate_images("picture of shapes", n=1, steps=1)) == 1


def test_weight_average_is_saved_and_checkpoint_keeps_trained_weights(tmp_path):
    from polymodal.checkpoint import load_weights

    task, cfg = load_task_config("configs/text_to_image_flow.yaml", [
        *TINY, "ema_decay=0.9", "train.steps=4", "train.checkpoint_every=2", f"data.path={tmp_path / 'shapes'}",
        f"train.out_dir={tmp_path / 'run'}"])
    task(cfg, progress=False)
    averaged = polymodal.load(tmp_path / "run")
    trained = polymodal.load(tmp_path / "run")
    load_weights(trained, tmp_path / "run" / "checkpoint")
    differ = [k for k, v in averaged.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert differ  # the model folder holds the average, the checkpoint the weights training resumes from
