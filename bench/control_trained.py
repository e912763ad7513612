"""Do the trained caption controls obey, and are the captions still good? Length, form, focus, word budget (issue 21).

    polymodal train configs/prefix_lm_controls.yaml && polymodal train configs/prefix_lm_controls_focus.yaml
    OMP_NUM_THREADS=1 python bench/control_trained.py [--model runs/prefix_lm_controls_focus/model]
    polymodal train configs/transformer.yaml && polymodal train configs/transformer_controls.yaml
    OMP_NUM_THREADS=1 python bench/control_trained.py --name transformer --model runs/transformer_controls/model \
        --before runs/transformer/model
    python bench/control_trained.py --page-only [--name transformer]   # redraw the docs section from the JSON

The captioner trained with controls, beam 3, on the Shapes World test images (n=5000, seed 0; never trained on),
under each control; per control:
- **obeys**: length: the caption's word count is nearest to the length asked for (of the scene's three targets);
  form: a list names the objects comma separated with no relation word, a sentence has a relation and no comma;
  focus: the caption names the chosen object's colour and shape and no other object (eval/control_obey.py);
  word budget: the caption has at most N words;
- **CIDEr-D** (coco-caption, PTB tokenizer) against the references filtered to what the control asks: the scene's
  references that obey it plus the caption built for it from the scene (for focus: the object's own caption),
  beside the same model's uncontrolled captions on the same references.
The focus object is drawn per image (seed 0); the point is a click on it (within 80% of its radius), the box its
bounding box, the phrase "the ... one" with the fewest of its words that no other object shares (images where
no phrase singles it out are left out of that row). Also: the uncontrolled CIDEr-D of the captioner the control
training started from (`--before`; plain captioning before it). Writes docs/results/control_trained[_NAME].json and
the `<!-- bench:control_trained[_NAME] -->` section of docs/control.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from polymodal import load
from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir
from polymodal.config import DataConfig
from polymodal.data.caption_controls import LENGTHS, focus_caption, focus_phrases, point_on
from polymodal.data.controlled_captions import read_scenes
from polymodal.data.datasets import load_split, shapes_folder
from polymodal.data.shapes_text import noun
from polymodal.eval.caption_metrics import caption_metrics
from polymodal.eval.control_obey import filtered_references, focus_obeys, form_of, length_obeys, words

sys.path.append(str(Path(__file__).resolve().parent))
from _history import put_section  # noqa: E402
from _report import load_average, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "control.md"
COMMANDS = {"": "polymodal train configs/prefix_lm_controls.yaml && polymodal train configs/prefix_lm_controls_focus.yaml "
                "&& OMP_NUM_THREADS=1 python bench/control_trained.py",
            "transformer": "polymodal train configs/transformer.yaml && polymodal train configs/transformer_controls.yaml "
                           "&& OMP_NUM_THREADS=1 python bench/control_trained.py --name transformer --model "
                           "runs/transformer_controls/model --before runs/transformer/model"}
BEAM, BUDGETS = 3, (4, 8)


def caption_all(model, images: list, per_image: list[dict] | None = None, **control) -> list[str]:
    """Captions in batches of 32; `per_image`: a control for each image (one batch per image then)."""
    if per_image is not None:
        return [model.caption([image], beam_size=BEAM, **c)[0] for image, c in zip(images, per_image, strict=True)]
    out: list[str] = []
    for start in range(0, len(images), 32):
        out += model.caption(images[start:start + 32], beam_size=BEAM, **control)
    return out


def cider(captions: list[str], refs: list[list[str]]) -> float:
    return caption_metrics({str(i): c for i, c in enumerate(captions)}, {str(i): r for i, r in enumerate(refs)},
                           cider_only=True)["cider"]


def row(name: str, captions: list[str], free: list[str], refs: list[list[str]], obeys: list[bool],
        target: float) -> dict:
    return {"control": name, "images": len(captions), "obey": sum(obeys) / len(obeys), "target": target,
            "cider": cider(captions, refs), "free_cider": cider(free, refs),
            "example": captions[0]}


def focus_rows(model, images: list, scenes: list, free: list[str], rng: random.Random) -> list[dict]:
    chosen = [rng.choice(s.objects) for s in scenes]
    refs = [[focus_caption(o), noun(o, with_size=False)] for o in chosen]
    asks = {"point": [{"focus_point": point_on(o, rng)} for o in chosen],
            "box": [{"focus_box": (max(o.x - o.radius, 0), max(o.y - o.radius, 0), min(o.x + o.radius, 1),
                                   min(o.y + o.radius, 1))} for o in chosen]}
    rows = []
    for how, per_image in asks.items():
        captions = caption_all(model, images, per_image)
        rows.append(row(f"focus by a {how}", captions, free, refs, [focus_obeys(c, o) for c, o in
                                                                   zip(captions, chosen, strict=True)], 0.90))
    named = [(i, min(focus_phrases(s, o), key=len)) for i, (s, o) in enumerate(zip(scenes, chosen, strict=True))
             if focus_phrases(s, o)]
    captions = caption_all(model, [images[i] for i, _ in named],
                           [{"focus_phrase": f"the {' '.join(p)} one"} for _, p in named])
    rows.append(row("focus by a phrase (\"the red one\")", captions, [free[i] for i, _ in named],
                    [refs[i] for i, _ in named],
                    [focus_obeys(c, chosen[i]) for c, (i, _) in zip(captions, named, strict=True)], 0.90))
    return rows


def measure(model_dir: str, before_dir: str, n_images: int, name: str) -> dict:
    start = time.time()
    data = DataConfig(format="shapes", n=5000, seed=0)
    records = load_split(data, "test")[:n_images]
    by_id = read_scenes(shapes_folder(data))
    scenes, images, refs = [by_id[r.id] for r in records], [r.image for r in records], [r.captions for r in records]
    model = load(model_dir)
    free = caption_all(model, images)
    before = caption_all(load(before_dir), images)
    rows = [row("none (this model)", free, free, refs, [True] * len(free), 0.0),
            row(f"none (`{before_dir}`, before control training)", before, free, refs, [True] * len(free), 0.0)]
    for length in LENGTHS:
        captions = caption_all(model, images, length=length)
        rows.append(row(f"length {length}", captions, free,
                        [filtered_references(r, s, "length", length) for r, s in zip(refs, scenes, strict=True)],
                        [length_obeys(c, s, length) for c, s in zip(captions, scenes, strict=True)], 0.95))
        print(rows[-1], flush=True)
    for form in ("list", "sentence"):
        captions = caption_all(model, images, form=form)
        rows.append(row(f"form {form}", captions, free,
                        [filtered_references(r, s, "form", form) for r, s in zip(refs, scenes, strict=True)],
                        [form_of(c, len(s.objects)) == form for c, s in zip(captions, scenes, strict=True)], 0.95))
        print(rows[-1], flush=True)
    rows += focus_rows(model, images, scenes, free, random.Random(0))
    for budget in BUDGETS:
        captions = caption_all(model, images, max_new_words=budget)
        rows.append(row(f"word budget {budget}", captions, free, refs, [len(words(c)) <= budget for c in captions],
                        1.0))
    return {"command": COMMANDS[name], "model": model_dir, "images": len(records), "beam": BEAM, "rows": rows,
            "date": time.strftime("%Y-%m-%d"), "machine": f"{machine()}, {load_average()}",
            "seconds": round(time.time() - start)}


def page(result: dict, name: str) -> str:
    normal = next(r for r in result["rows"] if r["control"] == "length normal")
    ratio = normal["cider"] / normal["free_cider"]
    title = "trained controls (length, form, focus) and the word budget" + (f": the {name} captioner" if name else "")
    lines = [f"## Measured: {title}", "",
             f"`{result['command']}` ({result['date']}, {result['machine']}, {result['seconds']} s): the captioner "
             f"trained with controls (`{result['model']}`), beam {result['beam']}, the first {result['images']} "
             f"Shapes World test images (n=5000, seed 0). bench/control_trained.py's docstring defines each check; "
             f"CIDEr-D is against the references filtered to what the control asks, beside the same model's "
             f"uncontrolled captions on the same references. Figures: docs/results/{results_file(name).name}.", "",
             "| control | obeys | target | CIDEr-D (filtered refs) | uncontrolled CIDEr-D (same refs) | example (first image) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        met = "" if not r["target"] else (" (met)" if r["obey"] >= r["target"] else " (**missed**)")
        target = f">= {r['target']:.0%}{met}" if r["target"] else "-"
        lines.append(f"| {r['control']} | {r['obey']:.1%} | {target} | {r['cider']:.3f} ({r['images']} images) | "
                     f"{r['free_cider']:.3f} | {r['example']} |")
    lines += ["", f"Normal length vs uncontrolled on the same references: CIDEr-D {normal['cider']:.3f} vs "
              f"{normal['free_cider']:.3f} ({ratio - 1:+.1%}; target: no more than 5% below, "
              f"{'met' if ratio >= 0.95 else '**missed**'})."]
    return "\n".join(lines)


def results_file(name: str) -> Path:
    return ROOT / "docs" / "results" / f"control_trained{'_' + name if name else ''}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/prefix_lm_controls_focus/model")
    parser.add_argument("--before", default=str(bundled_model_dir(BUNDLED_CAPTIONER).relative_to(ROOT)),
                        help="the captioner the control training started from")
    parser.add_argument("--name", default="", choices=sorted(COMMANDS), help="a second captioner's own section")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--page-only", action="store_true", help="redraw the docs section from the JSON")
    args = parser.parse_args()
    results = results_file(args.name)
    if args.page_only:
        result = json.loads(results.read_text(encoding="utf-8"))
    else:
        result = measure(args.model, args.before, args.images, args.name)
        results.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    markdown = page(result, args.name)
    section = "control_trained" + (f"_{args.name}" if args.name else "")
    DOC.write_text(put_section(DOC.read_text(encoding="utf-8"), section, markdown), encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
