"""Bundle a trained assistant into the package: src/polymodal/assets/shapes_assistant/.

    OMP_NUM_THREADS=2 python bench/bundle_assistant.py --model runs/assistant_look_scst/model \
        --train-command 'polymodal train configs/assistant.yaml ...' [--train-command ...] [--measured FILE]

The model is measured as docs/assistant.md measures its model (bench/assistant.py `measure`: the first 500 images
of test and held-out compositions) unless --measured gives figures that `measure` wrote already. Weights are stored
in float16 (half the size; they load back into float32); the float16 model's greedy replies are compared with the
float32 model's on the first images' requests before writing. Writes docs/results/assistant_bundled.json, whose
figures card.json carries, and the bundle; `polymodal chat shapes_assistant IMAGE` and the page then use it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _report import machine
from assistant import measure, request_kinds, without_notes

import polymodal
from polymodal.assets import BUNDLED_ASSISTANT, install_bundle, write_bundle
from polymodal.config import DataConfig
from polymodal.data.datasets import load_split, shapes_folder
from polymodal.data.dialogue import read_scenes
from polymodal.data.qa import ImageBank
from polymodal.eval.assistant import reply_correct, run_queries, scene_queries

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "assistant_bundled.json"
KINDS = ("accuracy/count", "accuracy/position", "accuracy/region", "accuracy/follow/where")


def half_agreement(model_dir: Path, folder: Path, images: int) -> dict[str, Any]:
    """Greedy replies of the float32 and float16 weights to every request about the first test images."""
    data = DataConfig(format="shapes", n=5000, seed=0)
    scenes = read_scenes(shapes_folder(data), "test")[:images]
    captions = {r.id: r.captions for r in load_split(data, "test")}
    queries = scene_queries(scenes, captions)
    models = [polymodal.load(m) for m in (model_dir, folder)]
    bank = ImageBank(sorted({q.image for q in queries}), models[0].cfg.image_size, progress=False)
    replies = [run_queries(m, queries, lambda p: bank[bank.index[p]], progress=False) for m in models]
    right = [sum(map(reply_correct, queries, r)) / len(queries) for r in replies]
    return {"images": images, "requests": len(queries),
            "same_reply": sum(a == b for a, b in zip(*replies, strict=True)) / len(queries),
            "accuracy_float32": right[0], "accuracy_float16": right[1]}


def card_figures(splits: dict[str, Any]) -> dict[str, str]:
    """The card's few figures, test / held-out, from `measure`'s results (bench/assistant.py)."""
    def both(get: Any) -> str:
        return " / ".join(f"{100 * get(splits[s]):.1f}%" for s in ("test", "heldout"))

    def lowest(r: dict[str, Any]) -> str:
        kinds = request_kinds(r)
        worst = min(kinds, key=kinds.get)
        return f"{worst.removeprefix('accuracy/')} {100 * kinds[worst]:.1f}%"

    out = {"lowest request type": " / ".join(lowest(splits[s]) for s in ("test", "heldout")),
           "POPE adversarial accuracy": both(lambda r: r["pope"]["adversarial"]["accuracy"]),
           "absent objects declined": both(lambda r: r["decline/absent"]),
           "follow-ups (the chat task's dialogues)": both(lambda r: r["dialogues"]["accuracy/follow-up"])}
    out |= {k.removeprefix("accuracy/"): both(lambda r, k=k: r[k]) for k in KINDS}
    out["captions CIDEr-D, greedy"] = " / ".join(f"{splits[s]['caption']['cider']:.3f}" for s in ("test", "heldout"))
    return {f"{name}, test / held-out": value for name, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=int, default=500, help="images per split measured (0 = all)")
    parser.add_argument("--measured", type=Path, default=None, help="figures bench/assistant.py `measure` wrote")
    parser.add_argument("--train-command", action="append", required=True,
                        help="a command that trained the model (repeat, in order)")
    parser.add_argument("--train-minutes", type=float, default=None)
    parser.add_argument("--note", default="", help="what this model is, for the results file")
    args = parser.parse_args()
    splits = json.loads(args.measured.read_text()) if args.measured else measure(
        args.model, Path("/nonexistent"), args.images)
    commands = [c.split("polymodal train", 1)[1] for c in args.train_command]  # without environment variables
    card = {"capability": "chat: answers, points, declines and describes",
            "trained_on": "Shapes World (n=5000, seed 0), train split: the instruction mixture of data/instructions.py",
            "command": " && ".join(f"polymodal train{c}" for c in commands),
            "figures": card_figures(splits), "source": "docs/results/assistant_bundled.json (docs/assistant.md)"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_bundle(args.model, Path(tmp) / BUNDLED_ASSISTANT, card)
        agreement = half_agreement(args.model, folder, images=50)
        print(f"float16 weights: {agreement['same_reply']:.1%} of {agreement['requests']} replies the same")
        target = install_bundle(folder, BUNDLED_ASSISTANT)
    argv = without_notes(sys.argv[1:])  # the note is in the file; --measured only saved measuring twice
    results = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python bench/bundle_assistant.py "
                          + shlex.join(argv),
               "model": str(args.model), "note": args.note, "machine": machine(), "images": args.images,
               "train_commands": args.train_command, "train_wall_minutes": args.train_minutes,
               "float16": agreement, "card": card["figures"], "splits": splits}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"wrote {target} ({size:.1f} MB) and {RESULTS}")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
