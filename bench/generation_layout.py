"""Does the image generator draw inside the layout box it is given? (issue 21: the generator's controls)

    polymodal train configs/text_to_image_tokens.yaml && polymodal train configs/text_to_image_layout.yaml
    polymodal train configs/text_to_image_layout.yaml init_from=runs/text_to_image_layout/model \\
        train.out_dir=runs/text_to_image_layout2 train.steps=2000 layout.p_box=0.8      # a second stage
    OMP_NUM_THREADS=1 python bench/generation_layout.py [--model runs/text_to_image_layout2/model]
    python bench/generation_layout.py --page-only      # redraw the docs section from the JSON

Prompts are the GenEval-style test prompts of bench/generation.py (Shapes World n=5000 seed 0, test split), one
image each (seed 0), graded by the same object parser (eval/generation.py):
- **single object** ("a small red circle") with a box of the object's size (its bounding square) at a random
  place (seed 0), not where the scene had it;
- **two objects in a relation** ("a small red circle to the left of a large blue square") with the box holding
  both objects of the scene the prompt was made from.
Per row: **in the box**: at least one object found and every found object's centre inside the box (as the
generator reads it: the grid cells its corners fall in, data/layout.py `inside`); **fully correct**: the prompt's
GenEval check (eval/generation.py `grade`); both with the box (`generate_images(box=...)`: the box's tokens after
the prompt), with a strict box (`strict_box=True`: besides, only background codes are written outside it,
data/layout.py `background_codes`), for the same prompts and seeds without a box (how often the objects land in
the box by chance), and for the generator before layout training, without a box.
Writes docs/results/generation_layout.json and the `<!-- bench:generation_layout -->` section of docs/control.md.

    OMP_NUM_THREADS=1 python bench/generation_layout.py --planning runs/text_to_image_scenes/model

measures the planning generator (docs/generation.md) the same way: its box is a constraint on the plan's
coordinates (models/plan_grammar.py), so there is no separate strict row; written to
docs/results/generation_layout_scenes.json and the `<!-- bench:generation_layout_planning -->` section.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import polymodal
from polymodal.assets import ASSETS, BUNDLED_VQA
from polymodal.data.layout import inside, objects_box
from polymodal.data.shapes import ShapesWorld
from polymodal.eval.generation import ObjectParser, grade, prompt_groups

sys.path.append(str(Path(__file__).resolve().parent))
from _history import put_section  # noqa: E402
from _report import load_average, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS, DOC = ROOT / "docs" / "results" / "generation_layout.json", ROOT / "docs" / "control.md"
PLANNING_RESULTS = ROOT / "docs" / "results" / "generation_layout_scenes.json"
COMMAND = ("polymodal train configs/text_to_image_tokens.yaml && polymodal train configs/text_to_image_layout.yaml && "
           "polymodal train configs/text_to_image_layout.yaml init_from=runs/text_to_image_layout/model "
           "train.out_dir=runs/text_to_image_layout2 train.steps=2000 layout.p_box=0.8 && "
           "OMP_NUM_THREADS=1 python bench/generation_layout.py")
GROUPS = {"single_object": "single object, a box of its size at a random place",
          "position": "two objects in a relation, the box holding both"}


def random_box(radius: float, rng: random.Random) -> tuple[float, float, float, float]:
    """A box of an object's size (its bounding square) whose object lies wholly in the image."""
    x, y = rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius)
    return x - radius, y - radius, x + radius, y + radius


def in_box(parsed: list, box: tuple) -> bool:
    return bool(parsed) and all(inside(p.x, p.y, box) for p in parsed)


def draw(model, prompts: list, boxes: list | None, strict: bool = False) -> list:
    return [model.generate_images(p.text, n=1, seed=0, box=None if boxes is None else boxes[i], strict_box=strict)[0]
            for i, p in enumerate(prompts)]


def prompts_and_boxes(per_group: int, split: str = "test") -> tuple[list, list]:
    """The prompts of both groups and each one's box (single objects: a random one of its size, seed 0)."""
    world = ShapesWorld(n=5000, seed=0, image_size=128)
    prompts = [p for p in prompt_groups([world.scene(split, i) for i in range(500)], split, per_group)
               if p.group in GROUPS]
    rng = random.Random(0)
    return prompts, [random_box(p.objects[0].radius, rng) if p.group == "single_object" else objects_box(p.objects)
                     for p in prompts]


def score_rows(prompts: list, boxes: list, parsed: dict[str, list]) -> list[dict]:
    """Per group: in the box, fully correct and both, for each way of drawing in `parsed`."""
    rows = []
    for group, label in GROUPS.items():
        idx = [i for i, p in enumerate(prompts) if p.group == group]
        row = {"group": group, "label": label, "n": len(idx)}
        for name, found in parsed.items():
            row[f"in_box_{name}"] = sum(in_box(found[i], boxes[i]) for i in idx) / len(idx)
            row[f"correct_{name}"] = sum(grade(prompts[i], found[i]) for i in idx) / len(idx)
            row[f"both_{name}"] = sum(in_box(found[i], boxes[i]) and grade(prompts[i], found[i])
                                      for i in idx) / len(idx)
        row["example"] = {"prompt": prompts[idx[0]].text, "box": [round(v, 3) for v in boxes[idx[0]]]}
        rows.append(row)
        print(row, flush=True)
    return rows


def measure(model_dir: str, before_dir: str, per_group: int) -> dict:
    started = time.time()
    prompts, boxes = prompts_and_boxes(per_group)
    parser = ObjectParser(polymodal.load(ASSETS / BUNDLED_VQA))
    model, before = polymodal.load(model_dir), polymodal.load(before_dir)
    if not model.cfg.outside_box_codes:
        raise SystemExit(f"{model_dir} has no background codes fitted (train it with layout.keep_outside=true)")
    parsed = {name: parser.parse(draw(m, prompts, b, strict)) for name, m, b, strict in
              (("box", model, boxes, False), ("strict", model, boxes, True), ("no_box", model, None, False),
               ("before", before, None, False))}
    rows = score_rows(prompts, boxes, parsed)
    return {"command": COMMAND, "model": model_dir, "before": before_dir, "rows": rows,
            "background_codes": [len(c) for c in model.cfg.outside_box_codes], "image_codes": model.codes,
            "date": time.strftime("%Y-%m-%d"), "machine": f"{machine()}, {load_average()}",
            "seconds": round(time.time() - started)}


def page(result: dict) -> str:
    lines = ["## Measured: the image generator's layout box", "",
             f"`{result['command']}` ({result['date']}, {result['machine']}, {result['seconds']} s): the generator "
             f"trained with layout boxes (`{result['model']}`) and the one it was trained from (`{result['before']}`), "
             f"one image per Shapes World test prompt (seed 0), graded by the object parser of docs/generation.md. "
             f"bench/generation_layout.py's docstring defines each column. Figures: "
             f"docs/results/generation_layout.json. The background codes (all that a strict box lets be written "
             f"outside it) are fitted by the layout training on its own training images (`layout.keep_outside`, "
             f"{' and '.join(map(str, result['background_codes']))} of the "
             f"{result['image_codes'] // len(result['background_codes'])} codes of each of a cell's two slots here); "
             f"`runs/text_to_image_layout2`, trained before they existed, had them fitted afterwards by the same "
             f"function (train/text_to_image_tokens.py `fit_outside_box_codes`, minimum count 1, purity 3: the "
             f"setting that kept most objects in the box on 40 validation prompts per "
             f"row, of (1, 3), (2, 9) and (5, 19)).", "",
             "| prompts | n | in the box, with the box | with a strict box | in that box without it (chance) "
             "| fully correct, with the box | with a strict box | without | before layout training "
             "| in the box and fully correct, with the box | with a strict box |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        best = max(r["in_box_box"], r["in_box_strict"])
        met = "met" if best >= 0.95 else "**missed**"
        lines.append(f"| {r['label']} | {r['n']} | {r['in_box_box']:.1%} | {r['in_box_strict']:.1%} (target >= 95%: "
                     f"{met}) | {r['in_box_no_box']:.1%} | {r['correct_box']:.1%} | {r['correct_strict']:.1%} | "
                     f"{r['correct_no_box']:.1%} | {r['correct_before']:.1%} | {r['both_box']:.1%} | "
                     f"{r['both_strict']:.1%} |")
    return "\n".join(lines)


def measure_planning(model_dir: str, per_group: int, candidates: list[int]) -> dict:
    """The planning generator with and without the box on test prompts; first, with `candidates`, how many plans
    to sample per image (the likeliest drawn) is chosen on validation prompts with their boxes."""
    started = time.time()
    parser = ObjectParser(polymodal.load(ASSETS / BUNDLED_VQA))
    model = polymodal.load(model_dir)
    sweep = {}
    if candidates:
        val_prompts, val_boxes = prompts_and_boxes(per_group // 2, split="val")
        for k in candidates:
            model.cfg.candidates = k
            found = parser.parse(draw(model, val_prompts, val_boxes))
            sweep[str(k)] = {r["group"]: r["correct_box"] for r in score_rows(val_prompts, val_boxes, {"box": found})}
        model.cfg.candidates = max(candidates, key=lambda k: sum(sweep[str(k)].values()))
    prompts, boxes = prompts_and_boxes(per_group)
    parsed = {name: parser.parse(draw(model, prompts, b)) for name, b in (("box", boxes), ("no_box", None))}
    sweep_flag = f" --candidates {','.join(map(str, candidates))}" if candidates else ""
    return {"command": f"OMP_NUM_THREADS=1 python bench/generation_layout.py --planning {model_dir}{sweep_flag}",
            "model": model_dir, "rows": score_rows(prompts, boxes, parsed), "candidates": model.cfg.candidates,
            "candidates_sweep_val": sweep, "date": time.strftime("%Y-%m-%d"),
            "machine": f"{machine()}, {load_average()}", "seconds": round(time.time() - started)}


def planning_page(result: dict) -> str:
    lines = ["## Measured: the planning generator's layout box", "",
             f"`{result['command']}` ({result['date']}, {result['machine']}, {result['seconds']} s): the same prompts, "
             f"boxes, seed and grader as above, for the planning generator (`{result['model']}`), whose box rules out "
             f"every plan coordinate that would put an object outside it; the likeliest of {result['candidates']} "
             f"sampled plans is drawn. Figures: docs/results/generation_layout_scenes.json.", ""]
    if result.get("candidates_sweep_val"):
        lines += ["Plans sampled per image, chosen on validation prompts with their boxes (fully correct):", "",
                  "| plans | " + " | ".join(GROUPS.values()) + " |", "|---" * (len(GROUPS) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(f"{v[g]:.1%}" for g in GROUPS) + " |"
                  for k, v in result["candidates_sweep_val"].items()]
        lines += [""]
    lines += ["| prompts | n | in the box, with the box | in that box without it (chance) | fully correct, with the "
              "box | without | in the box and fully correct, with the box |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        met = "met" if r["in_box_box"] >= 0.95 else "**missed**"
        lines.append(f"| {r['label']} | {r['n']} | {r['in_box_box']:.1%} (target >= 95%: {met}) | "
                     f"{r['in_box_no_box']:.1%} | {r['correct_box']:.1%} | {r['correct_no_box']:.1%} | "
                     f"{r['both_box']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/text_to_image_layout2/model")
    parser.add_argument("--before", default="runs/text_to_image_tokens/model")
    parser.add_argument("--per-group", type=int, default=80)
    parser.add_argument("--page-only", action="store_true", help="redraw the docs section from the JSON")
    parser.add_argument("--planning", default=None, help="a planning generator (scene plans) to measure instead")
    parser.add_argument("--candidates", type=lambda v: [int(x) for x in v.split(",")], default=[],
                        help="planning: plans per image to try on validation prompts first (the best is used)")
    args = parser.parse_args()
    if args.planning:
        result = measure_planning(args.planning, args.per_group, args.candidates)
        PLANNING_RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        markdown = planning_page(result)
        DOC.write_text(put_section(DOC.read_text(encoding="utf-8"), "generation_layout_planning", markdown),
                       encoding="utf-8")
        print(markdown)
        return
    if args.page_only:
        result = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        result = measure(args.model, args.before, args.per_group)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    markdown = page(result)
    DOC.write_text(put_section(DOC.read_text(encoding="utf-8"), "generation_layout", markdown), encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
