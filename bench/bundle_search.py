"""Make the bundled search: copy a trained dual encoder into the package and index built-in scenes with it.

    OMP_NUM_THREADS=1 polymodal train configs/contrastive.yaml train.out_dir=runs/contrastive_bundle train.steps=4000
    polymodal retrieval-eval runs/contrastive_bundle/model > runs/contrastive_bundle/retrieval_eval.json
    python bench/bundle_search.py --model runs/contrastive_bundle/model --eval runs/contrastive_bundle/retrieval_eval.json

Writes src/polymodal/assets/shapes_dual_encoder/ (weights, tokenizer, card.json with the figures of
`polymodal retrieval-eval`) and src/polymodal/assets/shapes_scenes_index/: an index of the first N
Shapes World test scenes (n=30000, seed 0; none is a training scene) made with `--copy-images`, so the
images travel inside it, plus scenes.json (what each scene holds, for tests that check search results).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from polymodal.api import load  # noqa: E402
from polymodal.assets import ASSETS, BUNDLED_DUAL_ENCODER, BUNDLED_INDEX, CARD_FILE  # noqa: E402
from polymodal.checkpoint import resolve_model_dir  # noqa: E402
from polymodal.config import DataConfig  # noqa: E402
from polymodal.data.datasets import load_split, shapes_folder  # noqa: E402
from polymodal.eval.ood import FILE as OOD_FILE  # noqa: E402
from polymodal.eval.ood import save_model_stats  # noqa: E402
from polymodal.eval.retrieval import build_image_index  # noqa: E402

DATA = DataConfig(format="shapes", n=30000, seed=0)  # the dual encoder's own data: its test split is unseen
WEIGHT_FILES = ("config.json", "model.safetensors", "tokenizer.json", OOD_FILE)


def copy_model(model_dir: Path, figures: dict[str, str]) -> Path:
    out = ASSETS / BUNDLED_DUAL_ENCODER
    out.mkdir(parents=True, exist_ok=True)
    if not (model_dir / OOD_FILE).is_file():  # a run from before training saved them: the same end-of-training step
        save_model_stats(load(model_dir).eval(), model_dir, [r.image for r in load_split(DATA, "train")],
                         [r.image for r in load_split(DATA, "val")])
    for name in WEIGHT_FILES:
        shutil.copyfile(model_dir / name, out / name)
    card = {"capability": "search images by text (and text by image)",
            "trained_on": "Shapes World (n=30000, seed 0): 24000 train images x 5 captions, NegCLIP hard negative "
                          "captions, batches of look-alike captions",
            "command": "polymodal train configs/contrastive.yaml train.steps=4000", "figures": figures,
            "source": "docs/retrieval.md"}
    (out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return out


def eval_figures(path: Path) -> dict[str, str]:
    """Headline figures of `polymodal retrieval-eval` output: R@1 both ways under the strict and fair rules."""
    report = json.loads(path.read_text(encoding="utf-8"))
    figures = {}
    for rule, label in (("true_of_image", "true of image"), ("strict", "strict")):
        m = report[rule]
        figures[f"R@1 image->text / text->image, 1000-image test gallery, {label}"] = (
            f"{m['i2t_r1']:.1f}% / {m['t2i_r1']:.1f}%")  # already in percent
    return figures


def build_index(model_dir: Path, n: int) -> Path:
    records = load_split(DATA, "test")[:n]
    staging = ASSETS / f".{BUNDLED_INDEX}.images"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for rec in records:  # only the first n scenes: index a folder holding just them
        shutil.copyfile(rec.image, staging / Path(rec.image).name)
    try:
        index, _ = build_image_index(load(model_dir).eval(), staging, progress=False, model_dir=ASSETS /
                                     BUNDLED_DUAL_ENCODER)
        out = index.save(ASSETS / BUNDLED_INDEX, copy_images=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    scenes = {}
    wanted = {rec.id: Path(rec.image).stem for rec in records}
    for line in (shapes_folder(DATA) / "scenes.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if str(entry["image_id"]) in wanted:
            scenes[wanted[str(entry["image_id"])]] = {"objects": entry["objects"]}
    (out / "scenes.json").write_text(json.dumps(scenes, separators=(",", ":")) + "\n", encoding="utf-8")
    card = {"capability": "search built-in scenes by text", "trained_on": f"the first {n} Shapes World test scenes "
            f"(n=30000, seed 0), embedded by {BUNDLED_DUAL_ENCODER}",
            "command": f"python bench/bundle_search.py --n {n}"}
    (out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/contrastive_bundle/model"))
    parser.add_argument("--eval", type=Path, required=True, help="JSON printed by `polymodal retrieval-eval`")
    parser.add_argument("--n", type=int, default=300, help="scenes in the index")
    args = parser.parse_args()
    model_dir = resolve_model_dir(args.model)
    print(f"model: {copy_model(model_dir, eval_figures(args.eval))}")
    print(f"index: {build_index(model_dir, args.n)}")


if __name__ == "__main__":
    main()
