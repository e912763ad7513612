"""Do controlled captions obey, and are they still good and true? Forced words and "no colours" (issue 21).

    OMP_NUM_THREADS=1 python bench/control.py

The bundled captioner (src/polymodal/assets/shapes_prefix_lm) on the first 300 Shapes World test images
(n=5000, seed 0), beam 5, under each control:
- **must mention one word**: a word sampled (seed 0) from the image's own objects (a shape, colour or size of
  one of them), so that a true caption with it exists;
- **must mention two words**: the colour and the shape of one object;
- **no colours**: the colour group banned (a control the model was not trained with).
Per control: the share of captions that obey it; CIDEr-D against the references filtered to what the control
asks (references that say the forced words; for "no colours", the references with their colour words removed,
since none lacks them) beside the uncontrolled captions' CIDEr-D on the same references; and whether the
captions still name only objects that exist (CHAIR-i / CHAIR-s and object recall, eval/hallucination.py).
Writes the section between the `<!-- bench:control -->` markers of docs/control.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from polymodal import load
from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir
from polymodal.config import DataConfig
from polymodal.data.datasets import load_split, shapes_folder
from polymodal.data.shapes import COLOURS
from polymodal.eval.caption_metrics import caption_metrics
from polymodal.eval.hallucination import ObjectTruth, words

sys.path.append(str(Path(__file__).resolve().parent))
from _history import put_section  # noqa: E402
from _report import load_average, machine  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "control.md"
BEAM = 5


def forced_words(objects: list, rng: random.Random) -> tuple[list[str], list[str]]:
    """One word of one of the image's objects, and the colour + shape of one object."""
    obj = rng.choice(objects)
    one = rng.choice([obj.name, obj.attributes["colour"], obj.attributes["size"]])
    two_of = rng.choice(objects)
    return [one], [two_of.attributes["colour"], two_of.name]


def caption_grouped(model, records: list, controls: list[dict]) -> dict[str, str]:
    """Caption each record under its own control, images with the same control in one batch."""
    groups: dict[tuple, list] = defaultdict(list)
    for record, control in zip(records, controls, strict=True):
        groups[tuple((k, tuple(v)) for k, v in sorted(control.items()))].append(record)
    out = {}
    for key, members in groups.items():
        for start in range(0, len(members), 32):
            chunk = members[start:start + 32]
            captions = model.caption([r.image for r in chunk], beam_size=BEAM, **{k: list(v) for k, v in key})
            out.update({r.id: c for r, c in zip(chunk, captions, strict=True)})
    return out


def cider(results: dict[str, str], references: dict[str, list[str]]) -> float:
    return caption_metrics(results, references, cider_only=True)["cider"]


def without(banned: set[str], caption: str) -> str:
    return " ".join(w for w in words(caption) if w not in banned)


def score(name: str, captions: dict[str, str], free: dict[str, str], refs: dict[str, list[str]],
          obeys: dict[str, bool], truth: ObjectTruth) -> dict:
    """Obey rate, CIDEr-D on the filtered references (controlled vs uncontrolled), CHAIR."""
    ids = [i for i in captions if refs.get(i)]
    sub_refs = {i: refs[i] for i in ids}
    truthful = truth.score(captions)
    return {"control": name, "images": len(captions), "obey": sum(obeys.values()) / len(obeys),
            "free_obey": None, "scored": len(ids),
            "cider": cider({i: captions[i] for i in ids}, sub_refs),
            "free_cider": cider({i: free[i] for i in ids}, sub_refs),
            "chair_i": truthful["chair_i"], "chair_s": truthful["chair_s"], "recall": truthful["object_recall"],
            "free_chair_i": truth.score({i: free[i] for i in captions})["chair_i"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    start = time.time()
    data = DataConfig(format="shapes", n=5000, seed=0)
    records = load_split(data, "test")[:args.images]
    truth = ObjectTruth.shapes(shapes_folder(data))
    model = load(bundled_model_dir(BUNDLED_CAPTIONER))
    rng = random.Random(0)
    one, two = zip(*(forced_words(truth.objects[r.id], rng) for r in records), strict=True)
    refs = {r.id: r.captions for r in records}
    free = caption_grouped(model, records, [{}] * len(records))
    rows = [score("none", free, free, refs, {i: True for i in free}, truth)]
    rows[0]["free_obey"] = 1.0
    colours, outputs = set(COLOURS), {}
    for name, forced in (("must mention 1 word", one), ("must mention 2 words", two)):
        captions = outputs[name] = caption_grouped(model, records, [{"force_words": f} for f in forced])
        asked = {r.id: f for r, f in zip(records, forced, strict=True)}
        said = {i: [ref for ref in refs[i] if set(asked[i]) <= set(words(ref))] for i in refs}
        row = score(name, captions, free, said, {i: set(asked[i]) <= set(words(c)) for i, c in captions.items()},
                    truth)
        row["free_obey"] = sum(set(asked[i]) <= set(words(c)) for i, c in free.items()) / len(free)
        rows.append(row)
        print(row, flush=True)
    # The hard case: a word of the image's objects that the uncontrolled caption leaves out.
    missing = {}
    for r in records:
        unsaid = sorted({w for o in truth.objects[r.id] for w in (o.name, *o.attributes.values())}
                        - set(words(free[r.id])))
        if unsaid:
            missing[r.id] = [rng.choice(unsaid)]
    hard = [r for r in records if r.id in missing]
    captions = outputs["left out"] = caption_grouped(model, hard, [{"force_words": missing[r.id]} for r in hard])
    said = {i: [ref for ref in refs[i] if set(missing[i]) <= set(words(ref))] for i in missing}
    row = score("must mention a word the uncontrolled caption leaves out", captions, free, said,
                {i: set(missing[i]) <= set(words(c)) for i, c in captions.items()}, truth)
    row["free_obey"] = 0.0
    rows.append(row)
    print(row, flush=True)
    plain = {i: [without(colours, ref) for ref in refs[i]] for i in refs}
    for name, control in (("no colours (banned_words: never generated)", "banned_words"),
                          ("no colours (omit_words: said, then left out)", "omit_words")):
        captions = outputs[control] = caption_grouped(model, records, [{control: ["colours"]}] * len(records))
        row = score(name, captions, free, plain, {i: not set(words(c)) & colours for i, c in captions.items()},
                    truth)
        row["free_obey"] = sum(not set(words(c)) & colours for c in free.values()) / len(free)
        rows.append(row)
        print(row, flush=True)
    examples = [(r.id, free[r.id], missing[r.id], outputs["left out"][r.id], outputs["banned_words"][r.id],
                 outputs["omit_words"][r.id]) for r in hard[:5]]
    write(rows, examples, len(records), time.time() - start)


def write(rows: list[dict], examples: list[tuple], n: int, seconds: float) -> None:
    table = ["| control | obeys | uncontrolled obeys | CIDEr-D (filtered refs) | uncontrolled CIDEr-D (same refs) | "
             "CHAIR-i | uncontrolled CHAIR-i | CHAIR-s | object recall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['control']} | {r['obey']:.1%} | {r['free_obey']:.1%} | {r['cider']:.3f} "
                     f"({r['scored']} images) | {r['free_cider']:.3f} | {r['chair_i']:.3f} | {r['free_chair_i']:.3f} | "
                     f"{r['chair_s']:.3f} | {r['recall']:.3f} |")
    shown = [f"| {i} | {free} | {', '.join(f)} | {c} | {ban} | {omit} |" for i, free, f, c, ban, omit in examples]
    markdown = "\n".join([
        "## Measured: obey rate, CIDEr-D and truth under each control",
        "",
        f"`OMP_NUM_THREADS=1 python bench/control.py` ({time.strftime('%Y-%m-%d')}, {machine()}, {load_average()}, "
        f"{seconds:.0f} s): the bundled captioner (`shapes_prefix_lm`), beam {BEAM}, the first {n} Shapes World test "
        f"images (n=5000, seed 0). Forced words are sampled (seed 0) from the image's own objects, so a true caption "
        f"with them exists. CIDEr-D (coco-caption, PTB tokenizer) is against the references filtered to what the "
        f"control asks: those that say the forced words; for \"no colours\" every reference with its colour words "
        f"removed (none lacks them). CHAIR-i: share of named objects that are not in the image; CHAIR-s: share of "
        f"captions naming one; object recall: share of the image's objects named.",
        "",
        *table,
        "",
        "Examples (the first test images whose uncontrolled caption leaves out a word of their objects):",
        "",
        "| image | uncontrolled | forced | with it | no colours (banned) | no colours (omitted) |",
        "|---|---|---|---|---|---|", *shown,
    ])
    text = DOC.read_text() if DOC.exists() else "# Controlling what a caption says\n"
    DOC.write_text(put_section(text, "control", markdown))
    print(markdown)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
