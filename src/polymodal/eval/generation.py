"""GenEval-style grading of generated Shapes World images, built from the project's own parts.

The grader parses an image into objects (colour, shape, size, position):
1. foreground = pixels far from the background (the median of the border), split into connected
   components (4-neighbour); specks under `min_area` pixels are dropped;
2. colour = the Shapes World palette colour nearest to the component's core (its most saturated half);
3. shape = the bundled VQA model's answer to "what shape is the white object?" asked of an image that holds
   this component alone, repainted white, on the background (an in-distribution one-object scene for the
   VQA model, and never a held-out colour-shape pairing);
4. size = the component's extent divided by the extent of that shape at radius 1, compared with the midpoint
   of the two Shapes World radii; position = the centre of the component's bounding box.
A region too large, too sparse or too far from every palette colour to be an object gets "?" attributes,
so noise and smears count as objects that match nothing.

Prompts come from scenes (`prompt_groups`) and each group checks everything its prompt says:
single object, two objects (both shapes), count, colour, size, position (relation), attribute binding
(both colour-shape pairs). `grade` returns, per prompt, whether the parsed image is fully correct.

Example:
    >>> import random, polymodal
    >>> from polymodal.assets import ASSETS
    >>> from polymodal.data.shapes import render, sample_scene
    >>> grader = ObjectParser(polymodal.load(ASSETS / "shapes_vqa"))
    >>> scene = sample_scene(random.Random(3))
    >>> objects = grader.parse([render(scene, 64)])[0]
    >>> sorted((o.colour, o.shape, o.size) for o in objects) == sorted((o.colour, o.shape, o.size) for o in scene.objects)
    True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.shapes import COLOURS, SIZES, Scene, ShapeObject
from ..data.shapes_text import NUMBER_WORDS, canonical, left_to_right, noun, relation

PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (8, 3)
PALETTE_NAMES = list(COLOURS)
# Largest extent (width or height) of each shape drawn at bounding radius 1 (data/shapes.py's polygons).
EXTENT = {"circle": 1.70, "square": 1.44, "diamond": 2.0, "triangle": 1.68, "star": 1.90, "hexagon": 1.84}
RADIUS_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])  # between the two radii, on a log scale
MAX_EXTENT = 0.45   # the largest object (a large diamond) spans 0.34 of the side
MIN_FILL = 0.3      # share of its bounding box an object covers (a star: ~0.4)
UNKNOWN = "?"       # attribute of a region that is no recognisable object: it never matches a prompt
GROUPS = ("single_object", "two_objects", "count", "colour", "size", "position", "attribute_binding")


@dataclass(frozen=True)
class ParsedObject:
    """One object the grader found: attributes and bounding-box centre (x right, y down, in [0, 1])."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    area: int


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean (H, W) mask, each as an (K, 2) array of (row, col).

    Example:
        >>> m = np.zeros((4, 4), bool); m[0, 0] = m[0, 1] = m[3, 3] = True
        >>> sorted(len(c) for c in components(m))
        [1, 2]
    """
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for r0, c0 in zip(*np.nonzero(mask), strict=True):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        stack, pixels = [(int(r0), int(c0))], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        out.append(np.array(pixels))
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


class ObjectParser:
    """Parses images into `ParsedObject`s with a VQA model for shapes (see the module docstring)."""

    def __init__(self, vqa: object, size: int = 64, threshold: float = 70.0, min_area: int = 12,
                 max_colour_distance: float = 90.0):
        self.vqa, self.size, self.threshold, self.min_area = vqa, size, threshold, min_area
        self.max_colour_distance = max_colour_distance

    def _regions(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        arr = np.asarray(img.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC), np.float32)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        background = np.median(border, axis=0)
        diff = np.abs(arr - background).max(-1)  # (H, W)
        parts = [p for p in components(diff > self.threshold) if len(p) >= self.min_area]
        return arr, background, parts

    def _describe(self, arr: np.ndarray, background: np.ndarray, pixels: np.ndarray) -> tuple[str, Image.Image, dict]:
        values = arr[pixels[:, 0], pixels[:, 1]]  # (K, 3)
        strength = np.abs(values - background).max(-1)
        core = values[strength >= np.median(strength)].mean(0)
        dist = np.sqrt(((PALETTE - core) ** 2).sum(-1))
        colour = PALETTE_NAMES[int(dist.argmin())] if dist.min() <= self.max_colour_distance else UNKNOWN
        mask = np.zeros(arr.shape[:2], dtype=bool)
        mask[pixels[:, 0], pixels[:, 1]] = True
        grown = _dilate(_dilate(mask))  # the anti-aliased rim, too
        # Repainted white (by coverage), so the VQA model judges the outline, not a colour-shape pairing it
        # may never have seen (the held-out compositions)
        alpha = (np.linalg.norm(arr - background, axis=-1) / max(float(np.linalg.norm(core - background)), 1.0))
        white = background + alpha.clip(0, 1)[..., None] * (np.array(COLOURS["white"], np.float32) - background)
        alone = np.where(grown[..., None], white, background).clip(0, 255).astype(np.uint8)
        rows, cols = pixels[:, 0], pixels[:, 1]
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        box = {"extent": max(height, width) / self.size, "fill": len(pixels) / (height * width),
               "x": (cols.min() + cols.max() + 1) / 2 / self.size, "y": (rows.min() + rows.max() + 1) / 2 / self.size,
               "area": int(len(pixels))}
        return colour, Image.fromarray(alone), box

    def parse(self, images: Sequence[Image.Image], batch_size: int = 256) -> list[list[ParsedObject]]:
        """The objects of each image, left to right.

        Example:
            >>> from polymodal.assets import ASSETS
            >>> from polymodal.data.shapes import Scene, ShapeObject, render
            >>> import polymodal
            >>> img = render(Scene((ShapeObject("star", "blue", "large", 0.3, 0.6),), (40, 40, 40)), 64)
            >>> ObjectParser(polymodal.load(ASSETS / "shapes_vqa")).parse([img])[0][0].shape
            'star'
        """
        found: list[tuple[int, str, Image.Image, dict]] = []
        for i, img in enumerate(images):
            arr, background, parts = self._regions(img)
            found += [(i, *self._describe(arr, background, p)) for p in parts]
        shapes: list[str] = []
        for start in range(0, len(found), batch_size):
            chunk = found[start:start + batch_size]
            shapes += self.vqa.answer([f[2] for f in chunk],  # type: ignore[attr-defined]
                                      ["what shape is the white object?"] * len(chunk))
        out: list[list[ParsedObject]] = [[] for _ in images]
        for (i, colour, _, box), shape in zip(found, shapes, strict=True):
            if box["extent"] > MAX_EXTENT or box["fill"] < MIN_FILL:  # a smear or noise, not a Shapes World object
                shape = UNKNOWN
            radius = box["extent"] / EXTENT.get(shape, 1.7)
            size = "large" if radius > RADIUS_SPLIT else "small"
            out[i].append(ParsedObject(colour, shape, size, float(box["x"]), float(box["y"]), box["area"]))
        return [sorted(objs, key=lambda o: (o.x, o.y)) for objs in out]


def match_scene(scene: Scene, parsed: list[ParsedObject], tolerance: float = 0.06) -> tuple[int, int]:
    """(objects of `scene` found exactly, objects in `scene`): same colour, shape and size, centre within `tolerance`.

    Each parsed object is used at most once; extra parsed objects do not add to the count but a wrong count
    shows in `len(parsed)`.
    """
    free = list(parsed)
    hits = 0
    for o in scene.objects:
        for p in free:
            if (p.colour, p.shape, p.size) == (o.colour, o.shape, o.size) and math.hypot(p.x - o.x, p.y - o.y) <= tolerance:
                free.remove(p)
                hits += 1
                break
    return hits, len(scene.objects)


@dataclass(frozen=True)
class Prompt:
    """A prompt made from a scene, the group that grades it and the objects it asks for."""

    text: str
    group: str
    objects: tuple[ShapeObject, ...]
    split: str = "test"


def _pair_text(a: ShapeObject, b: ShapeObject) -> str:
    return f"{noun(a, False)} and {noun(b, False)}"


def prompt_groups(scenes: Sequence[Scene], split: str = "test", per_group: int = 100) -> list[Prompt]:
    """GenEval-style prompts from scenes, at most `per_group` per group, in the grammar the captions use.

    Example:
        >>> s = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "large", 0.7, 0.5)),
        ...           (40, 40, 40))
        >>> texts = {p.group: p.text for p in prompt_groups([s])}
        >>> texts["two_objects"], texts["position"]
        ('a red circle and a blue square', 'a small red circle to the left of a large blue square')
    """
    out: dict[str, list[Prompt]] = {g: [] for g in GROUPS}
    for scene in scenes:
        objs = tuple(left_to_right(scene.objects))
        if len(objs) == 1:
            out["single_object"].append(Prompt(canonical(scene), "single_object", objs, split))
            out["colour"].append(Prompt(noun(objs[0], False), "colour", objs, split))
            out["size"].append(Prompt(canonical(scene), "size", objs, split))
        elif len(objs) == 2:
            out["two_objects"].append(Prompt(_pair_text(*objs), "two_objects", objs, split))
            out["position"].append(Prompt(canonical(scene), "position", objs, split))
            if objs[0].colour != objs[1].colour and objs[0].shape != objs[1].shape:
                out["attribute_binding"].append(Prompt(_pair_text(*objs), "attribute_binding", objs, split))
        out["count"].append(Prompt(f"there are {NUMBER_WORDS[len(objs)]} shapes" if len(objs) > 2 else
                                   canonical(scene), "count", objs, split))
    return [p for g in GROUPS for p in out[g][:per_group]]


def _ordered(parsed: list[ParsedObject], a: ShapeObject, b: ShapeObject) -> tuple[ParsedObject, ParsedObject] | None:
    """The parsed objects standing for a and b (by colour and shape), or None when they are not both there."""
    pa = [p for p in parsed if (p.colour, p.shape) == (a.colour, a.shape)]
    pb = [p for p in parsed if (p.colour, p.shape) == (b.colour, b.shape) and p not in pa[:1]]
    return (pa[0], pb[0]) if pa and pb else None


def grade(prompt: Prompt, parsed: list[ParsedObject]) -> bool:
    """Whether an image, parsed into `parsed`, satisfies everything `prompt` says (and has no extra objects).

    Example:
        >>> o = ShapeObject("circle", "red", "small", 0.5, 0.5)
        >>> grade(Prompt("a small red circle", "single_object", (o,)), [ParsedObject("red", "circle", "small", 0.5, 0.5, 40)])
        True
    """
    want, g = prompt.objects, prompt.group
    if g == "count":
        return len(parsed) == len(want)
    if len(parsed) != len(want):
        return False
    if g in ("single_object", "size", "colour"):
        p, o = parsed[0], want[0]
        checks = {"single_object": (p.colour, p.shape, p.size) == (o.colour, o.shape, o.size),
                  "size": p.size == o.size, "colour": (p.colour, p.shape) == (o.colour, o.shape)}
        return checks[g]
    if g == "two_objects":
        return Counter(p.shape for p in parsed) == Counter(o.shape for o in want)
    if g == "attribute_binding":
        return Counter((p.colour, p.shape) for p in parsed) == Counter((o.colour, o.shape) for o in want)
    if g == "position":
        pair = _ordered(parsed, *want)
        if pair is None:
            return False
        as_objects = [ShapeObject(p.shape, p.colour, "small", p.x, p.y) for p in pair]
        return relation(*as_objects) == relation(*want)
    raise ValueError(f"unknown group {g!r}")
