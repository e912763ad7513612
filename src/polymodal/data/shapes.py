"""Shapes World: the built-in procedural image-text dataset, generated from a seed, no download.

Each image holds 1-4 objects (6 shapes x 8 colours x 2 sizes, anywhere) on a dark gray background
whose shade varies per image. Objects never overlap (rejection sampling on bounding circles), so
every object is visible. Each image comes with 5 reference captions (the first canonical, see
`describe`) and question/answer pairs (`questions`).

Splits, for `n` images: `val` and `test` get `n // 10` each, `train` the remaining
`n - 2 * (n // 10)`, and a `heldout` split of another `n // 10` images is generated in addition
(so `n + n // 10` in all). The (colour, shape) compositions in `HELDOUT_PAIRS` never appear in
train/val/test; every heldout image contains exactly one of them (cycling through the four), its
other objects are seen compositions, so heldout accuracy measures compositional generalization.

Image `i` of a split is generated from its own `random.Random` seeded with (seed, split, i), so it
never depends on the images before it, nor on `n`, nor on the image size (which only sets pixels).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from polymodal.data import shapes_text
from polymodal.data.folders import write_dataset_folder
from polymodal.data.records import CaptionRecord
from polymodal.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS = {  # saturated, far apart in RGB and all bright against the dark background
    "red": (230, 30, 30), "green": (30, 190, 50), "blue": (40, 90, 255), "yellow": (250, 230, 30),
    "purple": (160, 50, 220), "orange": (255, 140, 0), "white": (245, 245, 245), "cyan": (30, 220, 230),
}
SIZES = {"small": 0.10, "large": 0.17}  # radius of the object's bounding circle, as a fraction of the side
# Caption words that can stand for one another (hard negative captions, text/perturb.py)
WORD_GROUPS = (tuple(COLOURS), SHAPES, tuple(SIZES), ("two", "three", "four"), ("left", "right"),
               ("above", "below"), ("top", "bottom"))
# Attribute groups a user can name instead of words ("--ban colours"): every word of that kind a caption can use.
ATTRIBUTE_GROUPS = {"colours": tuple(COLOURS), "shapes": SHAPES, "sizes": tuple(SIZES),
                    "positions": ("left", "right", "above", "below", "top", "bottom", "middle")}
HELDOUT_PAIRS = (("green", "triangle"), ("red", "square"), ("blue", "star"), ("yellow", "hexagon"))
ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
SPLITS = ("train", "val", "test", "heldout")
VERSION = 1  # bump when a change alters scenes, pixels or text, so old folders are not taken as current
CAPTIONS_PER_IMAGE = 5

_SUPERSAMPLE = 4  # draw at 4x, then box-downsample: anti-aliased edges at ~1 ms per 64 px image
_GAP = 0.02  # extra space between bounding circles, so touching shapes still read as two


def _regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    a0 = math.radians(start_deg)
    return [(radius * math.cos(a0 + 2 * math.pi * k / n), radius * math.sin(a0 + 2 * math.pi * k / n))
            for k in range(n)]


# Vertices for a bounding circle of radius 1 (y down). Sizes are tuned so the shapes look about as big
# as each other; the few that poke a little past radius 1 are covered by _GAP.
_POLYGONS = {
    "square": [(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)],
    "diamond": [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)],
    "triangle": [(0.0, -0.72), (0.84, 0.72), (-0.84, 0.72)],
    "star": [(r * math.cos(math.radians(-90 + 36 * k)), r * math.sin(math.radians(-90 + 36 * k)))
             for k, r in zip(range(10), [1.0, 0.45] * 5, strict=True)],
    "hexagon": _regular(6, 0.92, 0.0),
}
_CIRCLE_RADIUS = 0.85


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is and where its centre is (x to the right, y downwards, both in [0, 1]).

    Example:
        >>> ShapeObject("circle", "red", "small", 0.25, 0.5).radius
        0.1
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS or self.size not in SIZES:
            raise ConfigError(f"unknown shape object {self.size!r} {self.colour!r} {self.shape!r}; "
                              f"use shapes {SHAPES}, colours {tuple(COLOURS)}, sizes {tuple(SIZES)}")

    @property
    def radius(self) -> float:
        """Radius of the bounding circle, as a fraction of the image side."""
        return SIZES[self.size]

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of its centre, in [0, 1] of the image."""
        return (self.x, self.y)


@dataclass(frozen=True)
class Scene:
    """Objects on a background colour; everything needed to render and describe one image.

    Example:
        >>> s = Scene((ShapeObject("star", "cyan", "large", 0.5, 0.5),), (40, 40, 44))
        >>> Scene.from_dict(s.to_dict()) == s
        True
    """

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]

    def to_dict(self) -> dict:
        """Plain JSON-safe form: {"objects": [{shape, colour, size, x, y}, ...], "background": [r, g, b]}."""
        return {"objects": [asdict(o) for o in self.objects], "background": list(self.background)}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Inverse of `to_dict`."""
        return cls(tuple(ShapeObject(**o) for o in d["objects"]), tuple(d["background"]))


def _place(rng: random.Random, r: float, placed: list[ShapeObject], tries: int = 30) -> tuple[float, float] | None:
    for _ in range(tries):
        x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
        if all(math.hypot(x - o.x, y - o.y) >= r + o.radius + _GAP for o in placed):
            return x, y
    return None


def sample_scene(rng: random.Random, allowed: Iterable[tuple[str, str]] | None = None,
                 must_include: tuple[str, str] | None = None, min_objects: int = 1,
                 max_objects: int = 4) -> Scene:
    """Draw a random scene whose (colour, shape) compositions all come from `allowed`.

    Args:
        rng: the only source of randomness; the same state gives the same scene.
        allowed: (colour, shape) pairs objects may take; default `SEEN_PAIRS` (no held-out pair).
        must_include: a (colour, shape) pair that one object must have, allowed or not.
        min_objects: fewest objects, at least 1.
        max_objects: most objects, at most 4.

    Returns:
        A `Scene` with non-overlapping objects, each fully inside the image.

    Example:
        >>> scene = sample_scene(random.Random(0), must_include=("green", "triangle"))
        >>> ("green", "triangle") in {(o.colour, o.shape) for o in scene.objects}
        True
    """
    pairs = list(SEEN_PAIRS if allowed is None else allowed)
    if not 1 <= min_objects <= max_objects <= 4:
        raise ConfigError(f"sample_scene: need 1 <= min_objects <= max_objects <= 4, got {min_objects}, {max_objects}")
    unknown = [p for p in [*pairs, *([must_include] if must_include else [])] if p not in ALL_PAIRS]
    if not pairs or unknown:
        raise ConfigError(f"sample_scene: allowed must be non-empty (colour, shape) pairs from ALL_PAIRS; bad: {unknown}")
    count = rng.randint(min_objects, max_objects)
    chosen = ([must_include] if must_include else []) + [rng.choice(pairs) for _ in range(count)]
    chosen = chosen[:count]
    rng.shuffle(chosen)
    for _attempt in range(100):
        objects: list[ShapeObject] = []
        for colour, shape in chosen:
            size = rng.choice(tuple(SIZES))
            xy = _place(rng, SIZES[size], objects)
            if xy is None and size != "small":  # crowded: a small one may still fit
                size, xy = "small", _place(rng, SIZES["small"], objects)
            if xy is None:
                break
            objects.append(ShapeObject(shape, colour, size, *xy))
        else:
            gray = rng.randint(28, 60)  # a dark gray with a faint per-image tint
            background = tuple(min(255, max(0, gray + rng.randint(-6, 6))) for _ in range(3))
            return Scene(tuple(objects), background)
    raise RuntimeError("sample_scene: could not place the objects without overlap")  # 4 small always fit


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Draw a scene as an anti-aliased RGB image of `size` x `size` pixels.

    Example:
        >>> render(sample_scene(random.Random(0)), size=64).size
        (64, 64)
    """
    if size < 8:
        raise ConfigError(f"render: image size must be at least 8 pixels, got {size}")
    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, r, fill = o.x * big, o.y * big, o.radius * big, COLOURS[o.colour]
        if o.shape == "circle":
            rr = r * _CIRCLE_RADIUS
            draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill)
        else:
            draw.polygon([(cx + r * dx, cy + r * dy) for dx, dy in _POLYGONS[o.shape]], fill=fill)
    return img.reduce(_SUPERSAMPLE)  # box filter: each output pixel averages a 4x4 block


def describe(scene: Scene, rng: random.Random | None = None, k: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """k reference captions, lowercase, no final period; the first is canonical and deterministic.

    The canonical caption lists objects left to right as "a {size} {colour} {shape}", with a relation
    for two objects and a count for three or more; the others vary wording ("there is ...", "... right
    of ...", sizes left out, regions such as "in the top left") and are all true of the scene.

    Args:
        scene: what to describe.
        rng: picks the variants; default a generator seeded from the scene itself.
        k: how many captions (distinct while the grammar has enough variants).

    Example:
        >>> s = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),
        ...            ShapeObject("square", "blue", "large", 0.7, 0.5)), (40, 40, 40))
        >>> describe(s)[0]
        'a small red circle to the left of a large blue square'
    """
    return shapes_text.describe(scene, rng, k)


def questions(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """Question/answer pairs, each {"question", "answer", "type"} with type in `shapes_text.QA_TYPES`.

    One question per type where the scene allows it: colour ("what colour is the circle?", only when
    the shape is unique), shape ("what shape is the blue object?"), count ("how many shapes are
    there?" -> "three"), position ("what is left of the square?" -> "circle", "is the circle left of
    the square?" -> "yes"/"no") and yes/no ("is there a green star?"), whose answers are "yes" and
    "no" with equal chance. Answers are single words.

    Example:
        >>> s = Scene((ShapeObject("circle", "red", "small", 0.5, 0.5),), (40, 40, 40))
        >>> questions(s, random.Random(0))[0]
        {'question': 'what colour is the circle?', 'answer': 'red', 'type': 'colour'}
    """
    return shapes_text.questions(scene, rng, tuple(COLOURS), SHAPES)


def split_sizes(n: int) -> dict[str, int]:
    """Images per split for `n`: val = test = heldout = n // 10, train = n - 2 * (n // 10).

    Example:
        >>> split_sizes(5000)
        {'train': 4000, 'val': 500, 'test': 500, 'heldout': 500}
    """
    tenth = n // 10
    return {"train": n - 2 * tenth, "val": tenth, "test": tenth, "heldout": tenth}


class ShapesWorld:
    """The dataset in memory: scenes, images and text generated on demand, image by image.

    Example:
        >>> world = ShapesWorld(n=40, seed=0, image_size=64)
        >>> {k: len(v) for k, v in world.splits.items()}
        {'train': 32, 'val': 4, 'test': 4, 'heldout': 4}
        >>> world.image("train", 0).size
        (64, 64)
    """

    def __init__(self, n: int = 5000, seed: int = 0, image_size: int = 128) -> None:
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"ShapesWorld: n must be a positive integer, got {n!r}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ConfigError(f"ShapesWorld: image_size must be an integer >= 8, got {image_size!r}")
        self.n, self.seed, self.image_size = n, int(seed), image_size
        self.sizes = split_sizes(n)

    @property
    def splits(self) -> dict[str, list[str]]:
        """Split name -> scene ids, e.g. {"train": ["train_000000", ...], ...}."""
        return {s: [f"{s}_{i:06d}" for i in range(c)] for s, c in self.sizes.items()}

    def info(self) -> dict:
        """The generator parameters, as written in captions.json["info"]."""
        return {"description": "Shapes World", "generator": "polymodal.data.shapes", "version": VERSION,
                "n": self.n, "seed": self.seed, "image_size": self.image_size,
                "captions_per_image": CAPTIONS_PER_IMAGE, "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
                "split_sizes": dict(self.sizes)}

    def _rng(self, split: str, i: int, purpose: str) -> random.Random:
        if split not in self.sizes:
            raise ConfigError(f"ShapesWorld: unknown split {split!r}; use one of {SPLITS}")
        if not 0 <= i < self.sizes[split]:
            raise IndexError(f"ShapesWorld: {split} has {self.sizes[split]} images, no index {i}")
        # str seeds hash with sha512: stable across runs and PYTHONHASHSEED
        return random.Random(f"shapes-world/v{VERSION}/{self.seed}/{split}/{i}/{purpose}")

    def scene(self, split: str, i: int) -> Scene:
        """The scene of image `i` of `split`."""
        rng = self._rng(split, i, "scene")
        if split == "heldout":
            return sample_scene(rng, SEEN_PAIRS, must_include=HELDOUT_PAIRS[i % len(HELDOUT_PAIRS)])
        return sample_scene(rng, SEEN_PAIRS)

    def image(self, split: str, i: int) -> Image.Image:
        """The rendered RGB image of `i` of `split`, `image_size` pixels square."""
        return render(self.scene(split, i), self.image_size)

    def captions(self, split: str, i: int) -> list[str]:
        """The reference captions of image `i` of `split`, canonical first."""
        return describe(self.scene(split, i), self._rng(split, i, "captions"))

    def questions(self, split: str, i: int) -> list[dict[str, str]]:
        """The question/answer pairs of image `i` of `split`."""
        return questions(self.scene(split, i), self._rng(split, i, "questions"))

    def records(self, split: str, root: str | os.PathLike | None = None) -> list[CaptionRecord]:
        """Caption records of a split, with image paths inside a `write_shapes_world` folder `root`."""
        base = Path(root) if root is not None else Path()
        return [CaptionRecord(id=sid, image=str(base / _file_name(split, i)), captions=self.captions(split, i),
                              split=split) for i, sid in enumerate(self.splits[split])]


def _file_name(split: str, i: int) -> str:
    return f"images/{split}/{split}_{i:06d}.png"


def _write(world: ShapesWorld, root: Path, progress: bool) -> None:
    images, annotations = [], []
    with open(root / "qa.jsonl", "w", encoding="utf-8") as qa_f, \
            open(root / "scenes.jsonl", "w", encoding="utf-8") as sc_f, \
            tqdm(total=sum(world.sizes.values()), disable=not progress, desc="Shapes World", unit="img") as bar:
        for split in SPLITS:
            (root / "images" / split).mkdir(parents=True)
            for i in range(world.sizes[split]):
                image_id, name, scene = len(images) + 1, _file_name(split, i), world.scene(split, i)
                render(scene, world.image_size).save(root / name, format="PNG")
                images.append({"id": image_id, "file_name": name, "width": world.image_size,
                               "height": world.image_size, "split": split})
                for caption in world.captions(split, i):
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
                for qa in world.questions(split, i):
                    qa_f.write(json.dumps({"image_id": image_id, "image": name, **qa, "split": split}) + "\n")
                sc_f.write(json.dumps({"image_id": image_id, "split": split, **scene.to_dict()}) + "\n")
                bar.update(1)
    with open(root / "captions.json", "w", encoding="utf-8") as f:  # last: its presence marks completion
        json.dump({"info": world.info(), "images": images, "annotations": annotations}, f)


def write_shapes_world(out_dir: str | os.PathLike, n: int = 5000, seed: int = 0, image_size: int = 128,
                       progress: bool = True) -> Path:
    """Write Shapes World to disk: PNG images, COCO-style captions.json, qa.jsonl and scenes.jsonl.

    Layout: `images/{split}/{split}_{i:06d}.png`; `captions.json` = {"info": generator parameters,
    "images": [{id, file_name, width, height, split}], "annotations": [{id, image_id, caption}]} with
    image ids unique across splits; `qa.jsonl` lines {image_id, image, question, answer, type, split};
    `scenes.jsonl` lines {image_id, split, objects, background}. Everything is written to a temporary
    folder next to `out_dir` and moved into place in one `os.replace`, so a folder is never half-written.
    Running again with the same parameters returns at once.

    Args:
        out_dir: destination folder; must not exist, be empty, or hold this very Shapes World.
        n: images before the extra heldout split (see `split_sizes`).
        seed: generator seed.
        image_size: image side in pixels.
        progress: show a tqdm bar.

    Returns:
        The path of the dataset folder.

    Raises:
        ConfigError: `out_dir` holds something else.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = write_shapes_world(f"{tmp.name}/shapes", n=40, image_size=64, progress=False)
        >>> sorted(p.name for p in root.iterdir()), len(list(root.glob("images/train/*.png")))
        (['captions.json', 'images', 'qa.jsonl', 'scenes.jsonl'], 32)
        >>> tmp.cleanup()
    """
    world = ShapesWorld(n, seed, image_size)
    return write_dataset_folder(out_dir, world.info(), lambda root: _write(world, root, progress), "a Shapes World",
                                files=("captions.json", "qa.jsonl", "scenes.jsonl"))
