"""An outside test bed: a second procedural dataset, made independently of Shapes World.

Shapes World (data/shapes.py) is what every default was tuned on; this generator is here to check
that the defaults also work on data they were not made for. It shares no code, vocabulary or
phrasing with Shapes World: one symbol per image (a ring, cross, arrow, crescent, the letter k or
the digit 7), one of 8 colours, a fill texture (plain, striped, dotted), a placement (one of four
corners) and a background (flat, a gradient or noise), drawn with PIL and numpy at 2x and
box-downsampled.

It writes the standard formats polymodal's readers take, so it goes through exactly the path a
user's own data would: `captions.json` (COCO captions, each image with its split),
`dataset_karpathy.json` (a Karpathy split file) and `qa.jsonl` (VQA-style: image, question,
answer, type, split), with 80/10/10 train/val/test splits. Image `i` depends only on (seed, i).

Example:
    >>> import tempfile
    >>> from polymodal.data.formats import read_karpathy
    >>> from polymodal.data.qa import read_qa
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = write_outside(f"{tmp.name}/outside", n=20, image_size=32, progress=False)
    >>> sorted(p.name for p in root.iterdir())
    ['captions.json', 'dataset_karpathy.json', 'images', 'qa.jsonl']
    >>> len(read_karpathy(root / "dataset_karpathy.json", split="test")), len(read_qa(root / "qa.jsonl")) >= 120
    (2, True)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..errors import ConfigError
from .folders import write_dataset_folder

SYMBOLS = ("ring", "cross", "arrow", "crescent", "k", "7")
NAMES = {"k": "letter k", "7": "digit seven"}  # how captions name a symbol; the answer is the key
COLOURS = {"crimson": (200, 20, 60), "orange": (255, 130, 0), "gold": (240, 200, 20), "lime": (120, 225, 40),
           "teal": (0, 150, 140), "navy": (25, 40, 160), "violet": (150, 60, 210), "pink": (255, 110, 190)}
TEXTURES = ("plain", "striped", "dotted")
BACKGROUNDS = ("flat", "gradient", "noise")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
DIRECTIONS = ("up", "down", "left", "right")
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
VERSION = 1  # bump when pixels or text change, so an old folder is not taken as current


@dataclass
class Item:
    """What one image shows; everything its captions and questions are made from.

    Example:
        >>> item = make_item(0, 3)
        >>> item == make_item(0, 3), item.symbol in SYMBOLS
        (True, True)
    """

    symbol: str
    colour: str
    texture: str
    corner: str
    background: str
    direction: str  # the arrow's direction ("" for other symbols)
    x: float        # centre, as fractions of the side
    y: float
    radius: float
    shades: tuple[int, int]  # background grey levels (flat: the first; gradient: from, to)


def make_item(seed: int, i: int) -> Item:
    """Image `i` of the dataset with this seed, sampled from its own generator."""
    rng = random.Random(f"outside-{seed}-{i}")
    corner, radius = rng.choice(CORNERS), rng.uniform(0.17, 0.24)
    sx = -1 if corner.endswith("left") else 1
    sy = -1 if corner.startswith("top") else 1
    x = 0.5 + sx * rng.uniform(0.08, 0.48 - radius)
    y = 0.5 + sy * rng.uniform(0.08, 0.48 - radius)
    symbol = rng.choice(SYMBOLS)
    return Item(symbol, rng.choice(list(COLOURS)), rng.choice(TEXTURES), corner, rng.choice(BACKGROUNDS),
                rng.choice(DIRECTIONS) if symbol == "arrow" else "", x, y, radius,
                (rng.randint(60, 200), rng.randint(60, 200)))


# ----------------------------------------------------------------------------- drawing
def _arrow(cx: float, cy: float, r: float, direction: str) -> list[tuple[float, float]]:
    pts = [(-1.0, -0.3), (0.1, -0.3), (0.1, -0.75), (1.0, 0.0), (0.1, 0.75), (0.1, 0.3), (-1.0, 0.3)]  # right
    turn = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}[direction]
    return [(cx + r * (px * turn[0] - py * turn[1]), cy + r * (px * turn[1] + py * turn[0])) for px, py in pts]


def _mask(item: Item, side: int) -> Image.Image:
    """The symbol's silhouette, 255 inside, at `side` pixels."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = item.x * side, item.y * side, item.radius * side
    box = (cx - r, cy - r, cx + r, cy + r)
    if item.symbol == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    elif item.symbol == "cross":
        w = 0.32 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif item.symbol == "arrow":
        draw.polygon(_arrow(cx, cy, r, item.direction), fill=255)
    elif item.symbol == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - 0.45 * r, cy - 1.05 * r, cx + 1.35 * r, cy + 0.75 * r), fill=0)
    else:  # a glyph, thickened so that its texture shows
        font = ImageFont.load_default(size=max(int(2.2 * r), 8))
        draw.text((cx, cy), item.symbol, fill=255, font=font, anchor="mm", stroke_width=max(int(0.2 * r), 1),
                  stroke_fill=255)
    return mask


def _background(item: Item, side: int, noise: np.random.Generator) -> np.ndarray:
    a, b = item.shades
    if item.background == "flat":
        grey = np.full((side, side), float(a))
    elif item.background == "gradient":
        ramp = np.linspace(a, b if abs(a - b) >= 80 else (a + 90 if a < 128 else a - 90), side)  # always visible
        grey = np.tile(ramp, (side, 1)) if a % 2 else np.tile(ramp[:, None], (1, side))
    else:
        grey = np.clip(a + noise.normal(0, 40, (side // 4, side // 4)), 0, 255).repeat(4, 0).repeat(4, 1)
    tint = np.array([1.0, 0.97, 0.94])  # a warm grey, so that no background matches a palette colour
    return grey[..., None] * tint


def render(item: Item, size: int = 64, seed: int = 0, i: int = 0) -> Image.Image:
    """The RGB image of `item`, `size` pixels square (noise drawn from (seed, i)).

    Example:
        >>> render(make_item(0, 0), 32).size
        (32, 32)
    """
    side = 2 * size
    noise = np.random.default_rng([seed, i])
    bg = _background(item, side, noise)
    m = np.asarray(_mask(item, side), dtype=np.float32)[..., None] / 255.0
    fill = np.broadcast_to(np.array(COLOURS[item.colour], dtype=np.float64), (side, side, 3)).copy()
    yy, xx = np.mgrid[0:side, 0:side] * (64.0 / side)  # texture period in 64 px units, whatever the size
    r, g, b = COLOURS[item.colour]
    ink = (10, 10, 10) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (250, 250, 250)  # contrasting: it shows
    if item.texture == "striped":
        fill[((xx + yy) % 6) < 2.5] = ink
    elif item.texture == "dotted":  # dense enough that even a glyph's stroke holds dots
        fill[((xx % 4.5 - 2.25) ** 2 + (yy % 4.5 - 2.25) ** 2) < 1.7] = ink
    out = bg * (1 - m) + fill * m
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")
    return img.resize((size, size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------- text
def _name(item: Item) -> str:
    return NAMES.get(item.symbol, item.symbol)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def captions(item: Item, rng: random.Random) -> list[str]:
    """Three reference captions, each in another phrasing.

    Example:
        >>> item = Item("ring", "teal", "striped", "top left", "noise", "", 0.3, 0.3, 0.2, (90, 90))
        >>> captions(item, random.Random(0))[0]
        'a teal striped ring in the top left corner on a noisy background'
    """
    adj = {"plain": "", "striped": "striped ", "dotted": "dotted "}[item.texture]
    bg = {"flat": "plain grey", "gradient": "shaded", "noise": "noisy"}[item.background]
    fill = {"plain": "solid", "striped": "with stripes", "dotted": "covered in dots"}[item.texture]
    where = item.corner.replace(" ", "-")
    head = f"{_name(item)} pointing {item.direction}" if item.direction else _name(item)
    return [f"{_a(item.colour)} {adj}{_name(item)} in the {item.corner} corner on a {bg} background",
            f"{head}, painted {item.colour} and {fill}, sitting {where}",
            rng.choice([f"there is {_a(item.colour)} {_name(item)} near the {item.corner}",
                        f"the picture shows one {item.colour} {_name(item)} over a {bg} backdrop"])]


def questions(item: Item, rng: random.Random) -> list[dict[str, str]]:
    """Question/answer pairs of six types (seven with an arrow), each phrased one of several ways.

    Example:
        >>> item = Item("arrow", "gold", "dotted", "bottom right", "flat", "up", 0.7, 0.7, 0.2, (90, 90))
        >>> sorted({q["type"] for q in questions(item, random.Random(0))})
        ['background', 'colour', 'direction', 'pattern', 'place', 'symbol', 'yes/no']
    """
    ref = rng.choice([_name(item), "symbol", "figure"])
    qa = [("colour", rng.choice([f"which colour does the {ref} have?", f"the {ref} is painted in which colour?",
                                 "what is the colour of the symbol?"]), item.colour),
          ("symbol", rng.choice(["which symbol is drawn?", "what figure can you see?",
                                 "name the symbol in the picture"]), item.symbol),
          ("pattern", rng.choice([f"what pattern fills the {ref}?", "is the symbol plain, striped or dotted?",
                                  "how is the figure filled in?"]), item.texture),
          ("place", rng.choice([f"in which corner is the {ref}?", "where is the symbol placed?",
                                "which corner holds the figure?"]), item.corner),
          ("background", rng.choice(["what kind of background is it?", "is the backdrop flat, a gradient or noise?"]),
           item.background)]
    if item.direction:
        qa.append(("direction", rng.choice(["which way does the arrow point?", "where is the arrow heading?"]),
                   item.direction))
    if rng.random() < 0.5:
        colour = item.colour if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != item.colour])
        qa.append(("yes/no", f"is the {ref} {colour}?", "yes" if colour == item.colour else "no"))
    else:
        symbol = item.symbol if rng.random() < 0.5 else rng.choice([s for s in SYMBOLS if s != item.symbol])
        qa.append(("yes/no", f"does the picture show a {NAMES.get(symbol, symbol)}?",
                   "yes" if symbol == item.symbol else "no"))
    return [{"question": q, "answer": a, "type": t} for t, q, a in qa]


# ----------------------------------------------------------------------------- writing
def split_of(i: int, n: int) -> str:
    """train for the first 80% of indices, then val, then test."""
    return "train" if i < n - 2 * (n // 10) else "val" if i < n - n // 10 else "test"


def _write(root: Path, n: int, seed: int, size: int, info: dict, progress: bool) -> None:
    coco_images, annotations, karpathy = [], [], []
    with open(root / "qa.jsonl", "w", encoding="utf-8") as qa_f:
        for i in tqdm(range(n), disable=not progress, desc="outside data", unit="img"):
            item, rng, split = make_item(seed, i), random.Random(f"text-{seed}-{i}"), split_of(i, n)
            name = f"{i:06d}.png"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            render(item, size, seed, i).save(root / "images" / split / name, format="PNG")
            texts = captions(item, rng)
            coco_images.append({"id": i + 1, "file_name": f"images/{split}/{name}", "width": size, "height": size,
                                "split": split})
            annotations += [{"id": len(annotations) + k + 1, "image_id": i + 1, "caption": c}
                            for k, c in enumerate(texts)]
            karpathy.append({"filepath": f"images/{split}", "filename": name, "imgid": i + 1, "split": split,
                             "sentences": [{"raw": c, "tokens": c.replace(",", "").split()} for c in texts]})
            for k, q in enumerate(questions(item, rng)):
                row = {"id": f"{i + 1}-{k}", "image_id": i + 1, "image": f"images/{split}/{name}", **q, "split": split}
                qa_f.write(json.dumps(row) + "\n")
    with open(root / "dataset_karpathy.json", "w", encoding="utf-8") as f:
        json.dump({"dataset": "outside", "images": karpathy}, f)
    with open(root / "captions.json", "w", encoding="utf-8") as f:  # last: its presence marks completion
        json.dump({"info": info, "images": coco_images, "annotations": annotations}, f)


def write_outside(out_dir: str | os.PathLike, n: int = 3000, seed: int = 0, image_size: int = 64,
                  progress: bool = True) -> Path:
    """Write the outside test bed: `images/{split}/NNNNNN.png`, captions.json, dataset_karpathy.json, qa.jsonl.

    Written to a temporary folder beside `out_dir`, then moved into place; running again with the same
    parameters returns at once.

    Args:
        out_dir: destination; must not exist, be empty, or hold this very dataset.
        n: images in all (80% train, 10% val, 10% test).
        seed: generator seed.
        image_size: image side in pixels.
        progress: show a tqdm bar.

    Raises:
        ConfigError: `out_dir` holds something else, or n < 10.
    """
    out = Path(out_dir)
    if n < 10:
        raise ConfigError(f"n={n}: the outside dataset needs at least 10 images (a tenth each for val and test)")
    info = {"generator": "polymodal.data.outside", "version": VERSION, "n": n, "seed": seed, "image_size": image_size}
    return write_dataset_folder(out, info, lambda root: _write(root, n, seed, image_size, info, progress),
                                "an outside dataset")


__all__ = ["Item", "make_item", "render", "captions", "questions", "write_outside"]
