"""docs/generation.md from the text -> image results of both families (bench/generation.py writes them).

    python bench/generation_report.py   # rewrites docs/generation.md from docs/results/generation*.json

Every number in the page is read from those JSON files; the comparison table puts the two families side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {  # family -> its results file; a missing file leaves the family out
    "planning": ROOT / "docs/results/generation_scenes.json",
    "discrete": ROOT / "docs/results/generation_tokens.json",
    "continuous": ROOT / "docs/results/generation.json",
}
FAMILY_OF = {"scene_image_generator": "planning", "token_image_generator": "discrete", "text_to_image": "continuous"}
PICTURES = {"planning": "_scenes", "discrete": "_tokens", "continuous": ""}  # suffix of each family's PNGs
MODELS = {
    "planning": "a decoder-only transformer that reads the caption and writes a scene plan (a background shade, then "
                "per object its words, box size and centre on a 64 x 64 raster; at most {steps} tokens, under the plan "
                "grammar), and a sprite renderer that draws each object's words in its box "
                "({params:.2f} M parameters in all), trained together from annotated objects (Shapes World's scenes; "
                "other captioned data with a COCO instances file), objects planned in the order the caption names "
                "them; 10% of captions dropped; sampled with classifier-free guidance {guidance:g} and temperature "
                "{temperature:g}, the likeliest of {candidates} plans drawn",
    "continuous": "a conditional U-Net ({params:.2f} M parameters, 2x2 pixel folding, cross-attention to a word-level "
                  "transformer text tower) trained by rectified flow with 10% caption dropout; sampled with "
                  "{steps} Euler steps and classifier-free guidance {guidance:g}",
    "discrete": "an FSQ image tokenizer (64 px -> {steps} codes of 1000, two per cell of an 8 x 8 grid) and a "
                "decoder-only transformer ({params:.2f} M parameters with the tokenizer) that reads the caption and "
                "writes the {steps} codes, "
                "10% of captions dropped in training; sampled one code per step with the KV cache, "
                "classifier-free guidance {guidance:g} and temperature {temperature:g}",
}
GROUP_ROWS = ["single_object", "two_objects", "count", "colour", "size", "position", "attribute_binding"]
EXAMPLES = {"single_object": "a small red circle", "two_objects": "a red circle and a blue square",
            "count": "there are three shapes", "colour": "a red circle", "size": "a large blue star",
            "position": "a small red circle to the left of a large blue square",
            "attribute_binding": "a red circle and a blue square (both pairs)"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _held(res: dict) -> float:
    return res["heldout_compositions"].get("single_object", {"correct": float("nan")})["correct"]


def _seconds16(res: dict) -> float:
    return res["speed"][str(res["steps"])]["seconds_16_images"]


def comparison(results: dict[str, dict]) -> list[str]:
    """One table: the families side by side on the same prompts, grader and machine."""
    names = list(results)
    rows = [("training (CPU-minutes)", lambda r: f"{r['training'].get('minutes', float('nan')):.1f} "
                                                 f"({r['training'].get('steps', '?')} steps)")]
    rows += [(f"{g} (test)", lambda r, g=g: _pct(r["groups"]["test"][g]["correct"])) for g in GROUP_ROWS]
    rows += [("held-out compositions, single object", lambda r: _pct(_held(r))),
             ("caption round trip, CIDEr-D", lambda r: f"{r['caption_round_trip']['cider_generated']:.3f}"),
             ("Fréchet distance (lower is better)", lambda r: f"{r['frechet']['generated_vs_test']:.2f}"),
             ("16 images at 64 px, seconds", lambda r: f"{_seconds16(r):.2f} ({r['steps']} steps)"),
             ("parameters", lambda r: f"{r['parameters'] / 1e6:.2f} M")]
    out = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |" for label, cell in rows]
    return out


def verdict(results: dict[str, dict]) -> str:
    """Which family the default config uses and why, in the numbers of the table (the fully-correct rates)."""
    if len(results) < 2:
        return ""
    score = {f: (r["groups"]["test"]["single_object"]["correct"] + r["groups"]["test"]["position"]["correct"], f)
             for f, r in results.items()}
    best, other = (f for _, f in sorted(score.values(), reverse=True)[:2])  # the winner and the runner-up
    b, o = results[best]["groups"]["test"], results[other]["groups"]["test"]
    return (f"**The default (`configs/text_to_image.yaml`) is the {best} family**: on the same test prompts it draws "
            f"single objects fully correct {_pct(b['single_object']['correct'])} of the time against "
            f"{_pct(o['single_object']['correct'])}, and two objects in the asked relation "
            f"{_pct(b['position']['correct'])} against {_pct(o['position']['correct'])}, for "
            f"{results[best]['training'].get('minutes', float('nan')):.0f} against "
            f"{results[other]['training'].get('minutes', float('nan')):.0f} training minutes." + WHY.get(best, ""))


WHY = {"planning": " Why: what to draw and where is decided in the plan, tokens the transformer writes the way it "
                   "writes words (copying the caption's phrases in order, placing each object after the ones before "
                   "it); the renderer then only has to draw one phrase in one box, which it learns for every colour "
                   "and shape word separately, so colour-shape pairs never seen together are drawn as well as the "
                   "rest. Its cost: it learns from annotated objects (Shapes World's scenes, or a COCO instances "
                   "file); for captions alone the discrete family (configs/text_to_image_tokens.yaml) is the one."}


def targets(res: dict) -> list[str]:
    g, t = res["groups"]["test"], res.get("training", {})
    rows = [("single object fully correct", ">= 95%", g["single_object"]["correct"], 0.95),
            ("two objects with a relation", ">= 80%", g["position"]["correct"], 0.80),
            ("held-out compositions (single object)", ">= 80%", _held(res), 0.80)]
    out = ["| target | goal | measured | met |", "|---|---|---|---|"]
    out += [f"| {name} | {goal} | {_pct(v)} | {'yes' if v >= bar else '**no**'} |" for name, goal, v, bar in rows]
    if t:
        out.append(f"| training time | <= 60 CPU-minutes | {t['minutes']:.1f} min | "
                   f"{'yes' if t['minutes'] <= 60 else '**no**'} |")
    s16 = _seconds16(res)
    out.append(f"| 16 images at {res['image_size']} px ({res['steps']} steps) | <= 2 s | {s16:.2f} s | "
               f"{'yes' if s16 <= 2 else '**no**'} |")
    return out


def family_section(family: str, res: dict) -> list[str]:
    g, real, t = res["groups"], res["groups_real_images"], res.get("training", {})
    model = MODELS[family].format(params=res["parameters"] / 1e6, steps=res["steps"], guidance=res["guidance"],
                                  temperature=res.get("temperature", 1.0), candidates=res.get("candidates", 1))
    out = [f"## The {family} family", "", f"Model: {model}.", "",
           "```", t.get("command", ""), res["command"], "```", ""]
    if t:
        out += [f"Training: {t['steps']} steps of batch {t['batch_size']} in {t['minutes']:.1f} CPU-minutes "
                f"({t.get('machine', res['machine'])}); final validation loss {t.get('val_loss', float('nan')):.3f}.", ""]
    if t.get("note"):
        out += [t["note"], ""]
    out += [f"![samples]({res['samples_png']})", "",
            "Rows: " + "; ".join(f"{i + 1}. \"{p}\"" for i, p in enumerate(res["sample_prompts"])) +
            " (4 seeds each, two prompts per row of 8).", "",
            "### GenEval-style groups: fully-correct rate", "",
            "One image per prompt. 'real' grades the rendered scene the prompt was made from (the grader's ceiling).", "",
            "| group | prompt example | test | heldout | real (test) |", "|---|---|---|---|---|"]
    for grp in GROUP_ROWS:
        cells = [f"{_pct(x[grp]['correct'])} (n={x[grp]['n']})" if grp in x else "-" for x in
                 (g["test"], g["heldout"], real["test"])]
        out.append(f"| {grp} | {EXAMPLES[grp]} | " + " | ".join(cells) + " |")
    for grp, r in res["heldout_compositions"].items():
        out.append(f"| held-out compositions, {grp} | a pair never seen in training | - | "
                   f"{_pct(r['correct'])} (n={r['n']}) | - |")
    if res.get("tokenizer_ceiling"):
        c = res["tokenizer_ceiling"]
        how = ("the true plans of real scenes drawn by its renderer" if family == "planning" else
               "real scenes passed through its image tokenizer (encode, then decode)")
        out += ["", f"The ceiling of this family: {how} "
                f"are graded object-exact {_pct(c['test']['object_exact'])} (test) and "
                f"{_pct(c['heldout']['object_exact'])} (heldout), image-exact {_pct(c['test']['image_exact'])} / "
                f"{_pct(c['heldout']['image_exact'])}" + ("; most misses are the outlines of small objects, read as "
                "another shape" if family == "discrete" else "") + f" (`{c['command']}`)."]
    out += ["", "### Targets (issue 19)", ""] + targets(res) + rest(res)
    return out


def rest(res: dict) -> list[str]:
    rt, fd, dv, nn, sp = (res[k] for k in ("caption_round_trip", "frechet", "diversity", "nearest_training_image",
                                           "speed"))
    out = ["", "### Caption round trip", "",
           f"The bundled captioner (beam 3) captions each generated image of the single-object, position and count "
           f"prompts (n={rt['n']}); CIDEr-D against the prompt: **{rt['cider_generated']:.3f}** for generated images, "
           f"{rt['cider_real']:.3f} for the real renderings of the same scenes.", "",
           "| prompt | caption of the generated image |", "|---|---|"]
    out += [f"| {e['prompt']} | {e['caption_of_generated']} |" for e in rt["examples"]]
    out += ["", "### Fréchet distance, diversity, copying", "",
            f"- Fréchet distance on {fd['features']} features: generated (n={fd['generated_n']}) vs real test "
            f"**{fd['generated_vs_test']:.2f}**; real val vs real test (the floor) {fd['real_val_vs_test']:.2f}.",
            f"- Diversity (8 seeds of each sample prompt): mean absolute pixel difference between two images of one "
            f"prompt {dv['mean_pixel_difference']:.3f} (real test images of different scenes: "
            f"{dv['real_test_mean_pixel_difference']:.3f}); {_pct(dv['distinct_pairs'])} of pairs differ by more than 0.02.",
            f"- Nearest training image (RMS pixel distance over all {nn['train_images']} training images, 200 images "
            f"each): generated median {nn['generated_median']:.3f} (min {nn['generated_min']:.3f}), real test median "
            f"{nn['real_test_median']:.3f} (min {nn['real_test_min']:.3f}); "
            f"{_pct(nn['generated_below_real_min'])} of generated images are closer to a training image than the "
            f"closest real test image is. Closest pair (generated, training): ![nearest]({res['nearest_png']})", "",
            "### Speed", "",
            f"16 images at {res['image_size']} px with guidance (two network passes per step), median of 3 runs, "
            f"{res['machine']}:", "", "| steps | seconds | steps/s |", "|---|---|---|"]
    out += [f"| {k} | {v['seconds_16_images']:.2f} | {v['steps_per_second']:.1f} |" for k, v in sp.items()]
    if res.get("steps_curve"):
        out += ["", "Accuracy against sampler steps:", "", "| steps | single object (test) | position (test) |",
                "|---|---|---|"]
        out += [f"| {k} | {_pct(v['single_object']['correct'])} | {_pct(v['position']['correct'])} |"
                for k, v in res["steps_curve"].items()]
    if res.get("guidance_sweep_val"):
        out += ["", "Guidance scale, chosen on validation scenes (fully-correct rate):", "",
                "| guidance | single object (val) | position (val) |", "|---|---|---|"]
        out += [f"| {k} | {_pct(v['single_object']['correct'])} | {_pct(v['position']['correct'])} |"
                for k, v in res["guidance_sweep_val"].items()]
    if res.get("temperature_sweep_val"):
        out += ["", f"Sampling temperature at guidance {res['guidance']:g}, chosen on validation scenes:", "",
                "| temperature | single object (val) | position (val) |", "|---|---|---|"]
        out += [f"| {k} | {_pct(v['single_object']['correct'])} | {_pct(v['position']['correct'])} |"
                for k, v in res["temperature_sweep_val"].items()]
    if res.get("candidates_sweep_val"):
        out += ["", f"Plans sampled per image (the likeliest by the model's own score drawn), at guidance "
                f"{res['guidance']:g} and temperature {res.get('temperature', 1.0):g}, chosen on validation scenes:", "",
                "| plans | single object (val) | position (val) |", "|---|---|---|"]
        out += [f"| {k} | {_pct(v['single_object']['correct'])} | {_pct(v['position']['correct'])} |"
                for k, v in res["candidates_sweep_val"].items()]
    out += ["", f"Bench wall time: {res['bench_minutes']:.1f} min."]
    return out


SPEED_FIGURES = {  # what the benchmarks page's figures are (docs/results/bench_generation.json)
    "continuous, 16 images (s)": {"what": "continuous family (U-Net, 20 Euler steps): 16 images at 64 px",
                                  "format": ".2f", "unit": " s"},
    "discrete, 16 images (s)": {"what": "discrete family (128 image tokens, KV cache): 16 images at 64 px",
                                "format": ".2f", "unit": " s"},
    "planning, 16 images (s)": {"what": "planning family (a scene plan, KV cache, then sprites drawn): 16 images "
                                "at 64 px", "format": ".2f", "unit": " s"},
}


def speed_section(results: dict[str, dict]) -> tuple[str, dict[str, float]]:
    """The benchmarks page's section: drawing speed of each family (and the continuous one's steps curve)."""
    lines = ["## Text -> image: drawing speed", "",
             "`python bench/generation.py --model MODEL` (each family's model; figures from "
             "docs/results/generation*.json) — 16 images at 64 px, guidance on (two rows per image), median of 3 "
             "runs. The planning family writes a plan of at most 38 tokens, then draws it once; the discrete family "
             "writes its image tokens one per step with the KV cache; the continuous one runs its U-Net once per "
             "Euler step. Accuracy: fully-correct single-object prompts (test).", "",
             "| family | steps | seconds for 16 images | steps/s | single object |", "|---|---|---|---|---|"]
    figures = {}
    for family, res in results.items():
        for steps, v in res["speed"].items():
            curve = res.get("steps_curve", {}).get(steps)
            acc = curve["single_object"]["correct"] if curve else (
                res["groups"]["test"]["single_object"]["correct"] if int(steps) == res["steps"] else None)
            lines.append(f"| {family} | {steps} | {v['seconds_16_images']:.2f} | {v['steps_per_second']:.1f} | "
                         f"{_pct(acc) if acc is not None else '-'} |")
        figures[f"{family}, 16 images (s)"] = round(_seconds16(res), 2)
    return "\n".join(lines), figures


def grader_section(res: dict) -> list[str]:
    out = ["## The grader, on real rendered scenes", "",
           "Objects are found as connected regions that stand out from the background; colour is the nearest "
           "palette colour; shape is the bundled VQA model's answer about the object alone (repainted white); "
           "size comes from the extent. Measured against the scene ground truth (colour, shape, size and centre "
           "within 0.06 of the side):", "",
           "| split | images | objects | object exact | image exact | count exact |", "|---|---|---|---|---|---|"]
    out += [f"| {split} | {r['images']} | {r['objects']} | {_pct(r['object_exact'])} | {_pct(r['image_exact'])} | "
            f"{_pct(r['count_exact'])} |" for split, r in res["grader_on_real"].items()]
    return out


def write_report(path: Path = ROOT / "docs/generation.md") -> None:
    """Rewrite the page from whichever family results exist."""
    results = {f: json.loads(p.read_text(encoding="utf-8")) for f, p in FAMILIES.items() if p.is_file()}
    for res in results.values():  # older result files name the pictures implicitly
        res.setdefault("samples_png", "generation_samples.png")
        res.setdefault("nearest_png", "generation_nearest.png")
    lines = [f"# Text -> image generation: {len(results)} families compared", "",
             "Generated by `bench/generation_report.py` from " + ", ".join(f"`{p.relative_to(ROOT)}`" for f, p in
                                                                          FAMILIES.items() if f in results) +
             " (written by `bench/generation.py`); every figure comes from the runs recorded there. The families "
             "train on the same data (Shapes World, 24000 training images, n=30000) on this 2-core machine and are "
             "graded by the same perception on the same held-out prompts.", "", *comparison(results), ""]
    if verdict(results):
        lines += [verdict(results), ""]
    first = next(iter(results.values()))
    lines += grader_section(first) + [""]
    for family, res in results.items():
        lines += family_section(family, res) + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    write_report()
    print("wrote docs/generation.md")
