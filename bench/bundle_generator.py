"""Bundle a trained text -> image generator into the package: src/polymodal/assets/shapes_generator/.

    python bench/bundle_generator.py --model runs/text_to_image_scenes

Weights are stored in float16 (half the size; they load back into float32, and the images drawn from the same
seed are compared with the float32 model's before writing); card.json carries the figures of
the family's results in docs/results/ (bench/generation.py on the same model: generation_scenes.json for the
planning family, the default).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import polymodal  # noqa: E402
from polymodal.assets import BUNDLED_GENERATOR, install_bundle, write_bundle  # noqa: E402

PROMPTS = ["a large red circle to the left of a small blue square", "a green star", "there are three shapes"]


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, np.float32) for im in images])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/text_to_image_scenes")
    ap.add_argument("--results", default=str(ROOT / "docs/results/generation_scenes.json"))
    args = ap.parse_args()
    source = polymodal.load(args.model)
    res = json.loads(Path(args.results).read_text(encoding="utf-8"))
    g, t = res["groups"]["test"], res["training"]
    card = {"capability": "draw from text",
            "trained_on": "Shapes World (n=30000, seed 0), train split captions" + (
                " and their scenes' objects" if source.architecture == "scene_image_generator" else ""),
            "command": "polymodal train" + t.get("command", "polymodal train configs/text_to_image.yaml")
            .split("  #")[0].split("polymodal train", 1)[1],  # without the environment variables
            "figures": {
                "fully correct, test: single object / two objects in relation / count":
                    f"{g['single_object']['correct']:.1%} / {g['position']['correct']:.1%} / "
                    f"{g['count']['correct']:.1%}",
                "held-out colour-shape pairs, single object":
                    f"{res['heldout_compositions']['single_object']['correct']:.1%}",
                "16 images at 64 px": f"{res['speed'][str(res['steps'])]['seconds_16_images']:.2f} s"},
            "source": "docs/generation.md"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_bundle(args.model, Path(tmp) / BUNDLED_GENERATOR, card)
        half = polymodal.load(folder)
        a = pixels(source.generate_images(PROMPTS, n=4, seed=0))
        b = pixels(half.generate_images(PROMPTS, n=4, seed=0))
        same = float((np.abs(a - b).max(axis=(1, 2, 3)) <= 8).mean())
        print(f"float16 weights: {same:.0%} of 12 images within 8 grey levels of the float32 model's")
        target = install_bundle(folder, BUNDLED_GENERATOR)
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"wrote {target} ({size:.1f} MB)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
