"""Shapes World: determinism, held-out compositions, faithful text, rendering, and the on-disk format."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from polymodal.data.records import CaptionRecord
from polymodal.data.shapes import (
    COLOURS,
    HELDOUT_PAIRS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesWorld,
    describe,
    questions,
    render,
    sample_scene,
    split_sizes,
    write_shapes_world,
)
from polymodal.data.shapes_text import QA_TYPES, variants
from polymodal.errors import ConfigError

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
_C, _S = "|".join(COLOURS), "|".join(SHAPES)
NP = re.compile(rf"\ban? (?:(small|large) )?({_C}) ({_S})\b")
REL = re.compile(rf"an? (?:(?:small|large) )?({_C}) ({_S}) (to the left of|left of|to the right of|right of|above|below) "
                 rf"an? (?:(?:small|large) )?({_C}) ({_S})\b")
REGION = re.compile(r"(in the top left|in the top right|in the bottom left|in the bottom right|at the top|"
                    r"at the bottom|on the left|on the right|in the middle)$")


def scenes(count: int, seed: int = 0) -> list[Scene]:
    return [sample_scene(random.Random(f"test/{seed}/{i}")) for i in range(count)]


def truth(a: ShapeObject, b: ShapeObject) -> str:
    """Independent statement of the spatial rule: the axis with the larger centre gap decides."""
    if abs(a.x - b.x) >= abs(a.y - b.y):
        return "left" if a.x < b.x else "right"
    return "above" if a.y < b.y else "below"


def find(scene: Scene, colour: str, shape: str) -> list[ShapeObject]:
    return [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]


# ---------------------------------------------------------------- determinism


def test_same_seed_same_scenes_pixels_and_text_different_seed_differs() -> None:
    a, b, c = ShapesWorld(40, seed=0, image_size=32), ShapesWorld(40, seed=0, image_size=32), ShapesWorld(40, seed=1, image_size=32)
    differs = 0
    for split, i in [("train", 0), ("train", 31), ("val", 3), ("test", 0), ("heldout", 2)]:
        assert a.scene(split, i) == b.scene(split, i)
        assert a.image(split, i).tobytes() == b.image(split, i).tobytes()
        assert a.captions(split, i) == b.captions(split, i)
        assert a.questions(split, i) == b.questions(split, i)
        differs += a.scene(split, i) != c.scene(split, i)
        differs += a.image(split, i).tobytes() != c.image(split, i).tobytes()
    assert differs == 10
    # image i depends on (seed, split, i) only: not on n, nor on the images before it
    assert ShapesWorld(400, seed=0).scene("train", 7) == a.scene("train", 7)
    assert a.scene("train", 0) != a.scene("val", 0)


def test_generation_does_not_depend_on_the_process_hash_seed() -> None:
    code = ("from polymodal.data.shapes import ShapesWorld; import json; w = ShapesWorld(40, 3, 32);"
            "print(json.dumps([w.captions('val', 1), w.questions('train', 5), w.scene('train', 5).to_dict()]))")
    hashseed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # differ from this process
    there = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": hashseed},
                           capture_output=True, text=True, check=True).stdout
    w = ShapesWorld(40, 3, 32)
    here = json.dumps([w.captions("val", 1), w.questions("train", 5), w.scene("train", 5).to_dict()])
    assert there.strip() == here


# ---------------------------------------------------------------- splits and held-out compositions


def test_split_sizes_rule() -> None:
    assert split_sizes(40) == {"train": 32, "val": 4, "test": 4, "heldout": 4}
    assert split_sizes(5000) == {"train": 4000, "val": 500, "test": 500, "heldout": 500}
    assert split_sizes(7) == {"train": 7, "val": 0, "test": 0, "heldout": 0}
    world = ShapesWorld(55)
    assert {k: len(v) for k, v in world.splits.items()} == {"train": 45, "val": 5, "test": 5, "heldout": 5}
    assert world.splits["val"][:2] == ["val_000000", "val_000001"]
    with pytest.raises(IndexError):
        world.scene("val", 5)
    with pytest.raises(ConfigError, match="unknown split"):
        world.scene("dev", 0)
    with pytest.raises(ConfigError):
        ShapesWorld(0)


def test_heldout_pairs_never_in_train_val_test_and_in_every_heldout_image() -> None:
    world = ShapesWorld(200, seed=5)
    held = set(HELDOUT_PAIRS)
    seen_pairs: set[tuple[str, str]] = set()
    for split in ("train", "val", "test"):
        for i in range(world.sizes[split]):
            pairs = {(o.colour, o.shape) for o in world.scene(split, i).objects}
            assert not pairs & held, (split, i, pairs)
            seen_pairs |= pairs
    heldout_found = Counter()
    for i in range(world.sizes["heldout"]):
        pairs = [(o.colour, o.shape) for o in world.scene("heldout", i).objects]
        novel = [p for p in pairs if p in held]
        assert len(novel) == 1, (i, pairs)
        heldout_found[novel[0]] += 1
    assert set(heldout_found) == held and min(heldout_found.values()) == 5  # 20 images cycle the 4 pairs
    assert len(seen_pairs) > 30  # training data still covers most of the 44 seen compositions


# ---------------------------------------------------------------- scenes


def test_sample_scene_objects_are_separate_inside_and_constrained() -> None:
    counts = Counter()
    for i, scene in enumerate(scenes(300)):
        objs = scene.objects
        counts[len(objs)] += 1
        for k, a in enumerate(objs):
            assert a.radius <= a.x <= 1 - a.radius and a.radius <= a.y <= 1 - a.radius
            for b in objs[k + 1:]:
                assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius, i
        assert all(20 <= v <= 70 for v in scene.background)  # dark gray
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 40
    rng = random.Random(1)
    for _ in range(20):
        s = sample_scene(rng, allowed=[("white", "star")], must_include=("blue", "star"), min_objects=3)
        assert len(s.objects) >= 3 and Counter(o.colour for o in s.objects)["blue"] == 1
        assert all((o.colour, o.shape) in {("white", "star"), ("blue", "star")} for o in s.objects)
    with pytest.raises(ConfigError):
        sample_scene(rng, allowed=[("pink", "star")])
    with pytest.raises(ConfigError):
        sample_scene(rng, min_objects=3, max_objects=2)
    assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# ---------------------------------------------------------------- captions


def check_caption(scene: Scene, caption: str) -> None:
    objs = scene.objects
    assert caption == caption.lower() and caption.strip() == caption and not caption.endswith(".")
    for size, colour, shape in NP.findall(caption):  # every object named exists, with the size it has
        assert any(o.colour == colour and o.shape == shape and size in ("", o.size) for o in objs), caption
    nps = [(c, s) for _, c, s in NP.findall(caption)]
    if "including" in caption:
        assert len(nps) == 2
    elif caption != f"there are {list(NUMBERS)[len(objs) - 1]} shapes":
        assert Counter(nps) == Counter((o.colour, o.shape) for o in objs), caption  # each object once
    said = [w for w in caption.replace(":", "").split() if w in NUMBERS]
    assert all(NUMBERS[w] == len(objs) for w in said), caption
    for ca, sa, rel, cb, sb in REL.findall(caption):
        rel = rel.split()[-2] if "of" in rel else rel
        assert any(truth(a, b) == rel for a in find(scene, ca, sa) for b in find(scene, cb, sb)), caption
    m = REGION.search(caption)
    if m:
        o, words = objs[0], m.group(1).split()
        assert len(objs) == 1
        assert ("left" in words) == (o.x < 1 / 3) and ("right" in words) == (o.x > 2 / 3), caption
        assert ("top" in words) == (o.y < 1 / 3) and ("bottom" in words) == (o.y > 2 / 3), caption


def test_captions_are_faithful_varied_and_canonical_first() -> None:
    relations_seen = Counter()
    for scene in scenes(300):
        caps = describe(scene, random.Random(0), k=5)
        assert len(caps) == 5 and len(set(caps)) == 5
        for c in caps + variants(scene):
            check_caption(scene, c)
        # canonical: every object as "{size} {colour} {shape}", left to right
        canon = caps[0]
        objs = scene.objects
        ordered = sorted(objs, key=lambda o: o.x)
        named = NP.findall(canon)
        if len(objs) == 2 and truth(ordered[0], ordered[1]) in ("above", "below"):
            upper, lower = sorted(objs, key=lambda o: o.y)
            assert canon.endswith(f"{upper.size} {upper.colour} {upper.shape} above "
                                  f"a {lower.size} {lower.colour} {lower.shape}")
            relations_seen["above"] += 1
        else:
            assert named == [(o.size, o.colour, o.shape) for o in ordered], canon
            relations_seen["left" if len(objs) == 2 else len(objs)] += 1
        if len(objs) == 2:
            assert " and " not in canon and ("to the left of" in canon or " above " in canon)
        if len(objs) >= 3:
            assert canon.startswith(f"{list(NUMBERS)[len(objs) - 1]} shapes: ")
        assert describe(scene, random.Random(7))[0] == canon == describe(scene)[0]  # rng-independent
        assert describe(scene) == describe(scene)  # rng=None is deterministic too
    assert relations_seen["above"] > 10 and relations_seen["left"] > 10


def test_canonical_caption_examples() -> None:
    def s(*objs: tuple) -> Scene:
        return Scene(tuple(ShapeObject(*o) for o in objs), (40, 40, 40))

    assert describe(s(("circle", "red", "small", 0.2, 0.2)))[0] == "a small red circle"
    assert describe(s(("star", "blue", "large", 0.8, 0.5), ("circle", "orange", "small", 0.2, 0.6)))[0] == \
        "a small orange circle to the left of a large blue star"
    assert describe(s(("star", "blue", "large", 0.5, 0.8), ("circle", "orange", "small", 0.45, 0.2)))[0] == \
        "a small orange circle above a large blue star"
    three = s(("star", "blue", "large", 0.8, 0.5), ("circle", "red", "small", 0.2, 0.5), ("square", "orange", "small", 0.5, 0.2))
    assert describe(three)[0] == "three shapes: a small red circle, a small orange square and a large blue star"
    assert "is there an orange circle?" in {q["question"] for i in range(20) for q in questions(
        s(("circle", "orange", "small", 0.2, 0.2)), random.Random(i))}


def test_vocabulary_is_small() -> None:
    vocab: set[str] = set()
    for scene in scenes(300, seed=1):
        texts = describe(scene, random.Random(1)) + variants(scene)
        for qa in questions(scene, random.Random(1)):
            texts += [qa["question"], qa["answer"]]
        for t in texts:
            vocab.update(re.sub(r"[,:?]", " ", t).split())
    assert set(COLOURS) | set(SHAPES) | set(SIZES) <= vocab
    assert len(vocab) < 80, sorted(vocab)


# ---------------------------------------------------------------- questions


def check_qa(scene: Scene, qa: dict[str, str]) -> None:
    objs, q, a = scene.objects, qa["question"], qa["answer"]
    assert set(qa) == {"question", "answer", "type"} and qa["type"] in QA_TYPES and len(a.split()) == 1
    if m := re.fullmatch(r"what colour is the (\w+)\?", q):
        (o,) = [o for o in objs if o.shape == m.group(1)]  # referent unique
        assert (qa["type"], a) == ("colour", o.colour)
    elif m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        (o,) = [o for o in objs if o.colour == m.group(1)]
        assert (qa["type"], a) == ("shape", o.shape)
    elif q == "how many shapes are there?":
        assert (qa["type"], NUMBERS[a]) == ("count", len(objs))
    elif m := re.fullmatch(r"what is (left of|right of|above|below) the (\w+)\?", q):
        rel = m.group(1).split()[0]
        (b,) = [o for o in objs if o.shape == m.group(2)]
        side = {"left": lambda o: o.x < b.x, "right": lambda o: o.x > b.x,
                "above": lambda o: o.y < b.y, "below": lambda o: o.y > b.y}[rel]
        (o,) = [o for o in objs if o is not b and side(o)]  # the only object on that side
        assert (qa["type"], a, truth(o, b)) == ("position", o.shape, rel)
    elif m := re.fullmatch(r"is the (\w+) (left of|right of|above|below) the (\w+)\?", q):
        (x,) = [o for o in objs if o.shape == m.group(1)]
        (y,) = [o for o in objs if o.shape == m.group(3)]
        assert qa["type"] == "position" and a == ("yes" if truth(x, y) == m.group(2).split()[0] else "no")
    elif m := re.fullmatch(rf"is there an? ({_C}) ({_S})\?", q):
        assert qa["type"] == "yes/no" and a == ("yes" if find(scene, m.group(1), m.group(2)) else "no")
    else:
        raise AssertionError(f"unexpected question {q!r}")


def test_questions_are_answered_correctly_and_yes_no_is_balanced() -> None:
    types, answers = Counter(), {"yes/no": Counter(), "position": Counter()}
    for i, scene in enumerate(scenes(400, seed=2)):
        qas = questions(scene, random.Random(i))
        for qa in qas:
            check_qa(scene, qa)
            types[qa["type"]] += 1
            if qa["answer"] in ("yes", "no"):
                answers[qa["type"]][qa["answer"]] += 1
        assert sum(qa["type"] == "count" for qa in qas) == 1 and sum(qa["type"] == "yes/no" for qa in qas) == 1
    assert set(types) == set(QA_TYPES) and types["position"] > 200
    for kind, c in answers.items():
        assert 0.4 < c["yes"] / (c["yes"] + c["no"]) < 0.6, (kind, c)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [32, 100, 128])
def test_render_honours_size_and_draws_every_object(size: int) -> None:
    for scene in scenes(10, seed=3):
        img = render(scene, size)
        assert img.size == (size, size) and img.mode == "RGB"
        assert img.getpixel((0, 0)) == scene.background  # objects stay inside: corners are background
        assert len(img.getcolors(size * size)) > len(scene.objects) + 2  # anti-aliased edges blend colours
        if size >= 100:  # big enough that each object's centre pixel is fully inside it
            for o in scene.objects:
                px = img.getpixel((int(o.x * size), int(o.y * size)))
                assert max(abs(p - c) for p, c in zip(px, COLOURS[o.colour], strict=True)) <= 2, (o, px)
    assert ShapesWorld(40, image_size=size).image("heldout", 0).size == (size, size)
    with pytest.raises(ConfigError):
        render(scene, 4)


def test_render_is_fast() -> None:
    batch = scenes(200, seed=4)
    start = time.perf_counter()
    for scene in batch:
        render(scene, 64)
    per_image = (time.perf_counter() - start) / len(batch)
    assert per_image < 0.005, f"{per_image * 1e3:.2f} ms per 64 px image"  # ~0.1 ms here; 50 ms is a bug


# ---------------------------------------------------------------- on disk


def test_write_shapes_world_layout_and_idempotence(tmp_path: Path) -> None:
    out = write_shapes_world(tmp_path / "sw", n=20, seed=1, image_size=32, progress=False)
    assert out == tmp_path / "sw" and sorted(p.name for p in tmp_path.iterdir()) == ["sw"]  # no temp left
    coco = json.loads((out / "captions.json").read_text())
    assert coco["info"]["n"] == 20 and coco["info"]["seed"] == 1 and coco["info"]["image_size"] == 32
    ids = [im["id"] for im in coco["images"]]
    assert len(ids) == len(set(ids)) == 22
    world = ShapesWorld(20, seed=1, image_size=32)
    assert Counter(im["split"] for im in coco["images"]) == Counter(world.sizes)
    by_id = {im["id"]: im for im in coco["images"]}
    for im in coco["images"]:
        assert im["file_name"].startswith(f"images/{im['split']}/{im['split']}_")
        with Image.open(out / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"]) == (32, 32)
    first = coco["images"][0]
    with Image.open(out / first["file_name"]) as img:  # PNG is lossless: the file is the rendered image
        assert img.convert("RGB").tobytes() == world.image("train", 0).tobytes()
    caps = Counter(a["image_id"] for a in coco["annotations"])
    assert set(caps) == set(ids) and set(caps.values()) == {5}
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert [a["caption"] for a in coco["annotations"] if a["image_id"] == first["id"]] == world.captions("train", 0)
    scenes_by_id = {}
    for line in (out / "scenes.jsonl").read_text().splitlines():
        row = json.loads(line)
        scenes_by_id[row["image_id"]] = Scene.from_dict(row)
        assert row["split"] == by_id[row["image_id"]]["split"]
        held = any((o["colour"], o["shape"]) in HELDOUT_PAIRS for o in row["objects"])
        assert held == (row["split"] == "heldout")
    qa_rows = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert {r["image_id"] for r in qa_rows} == set(ids)
    for r in qa_rows:
        assert r["image"] == by_id[r["image_id"]]["file_name"] and r["split"] == by_id[r["image_id"]]["split"]
        check_qa(scenes_by_id[r["image_id"]], {k: r[k] for k in ("question", "answer", "type")})
    records = world.records("val", out)
    assert isinstance(records[0], CaptionRecord) and Path(records[0].image).is_file()

    stamp = (out / "captions.json").stat().st_mtime_ns
    assert write_shapes_world(out, n=20, seed=1, image_size=32, progress=False) == out
    assert (out / "captions.json").stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(ConfigError, match="seed=2"):
        write_shapes_world(out, n=20, seed=2, image_size=32, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a Shapes World"):
        write_shapes_world(other, n=20, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_shapes_world(empty, n=10, image_size=16, progress=False) / "captions.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other", "sw"]
