"""One assistant for everything (issue 25): per-kind accuracy, POPE, declines, follow-ups and captions of one
checkpoint on Shapes World test and held-out compositions, beside the old chat model where comparable.

    OMP_NUM_THREADS=1 python bench/assistant.py --model runs/assistant/model [--chat runs/chat/model] [--images 500]

Greedy replies; every request asked with the reference conversation before it. Writes docs/assistant.md and
docs/results/assistant.json. The old chat model is scored live on the same dialogues when its directory
exists; otherwise its published figures (docs/results/chat.json) are quoted and marked as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _report import machine

from polymodal import load
from polymodal.config import DataConfig
from polymodal.data.datasets import load_split, shapes_folder
from polymodal.data.dialogue import dialogue_report, read_dialogues, read_scenes, turn_messages
from polymodal.data.qa import ImageBank
from polymodal.eval.assistant import (
    Query,
    assistant_report,
    caption_report,
    long_queries,
    reply_correct,
    run_queries,
    scene_queries,
)
from polymodal.eval.hallucination import ObjectTruth
from polymodal.eval.pope import ObjectStats
from polymodal.generate import GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS, PAGE = ROOT / "docs" / "results" / "assistant.json", ROOT / "docs" / "assistant.md"
BEST_CAPTIONER = {"model": "prefix LM + SCST, greedy (docs/transformers.md)", "test": 5.055, "heldout": 4.729}
BEST_CAPTIONER_BEAM3 = {"test": 5.073, "heldout": 4.773}  # the same captioner with beam 3
LONG_EARLIER = 6  # earlier turns before the scored request of a long conversation (training had 2 at most)
# (decoding, the report's caption entry, the best captioner's CIDEr-D with the same decoding)
CAPTION_DECODINGS = (("greedy", "caption", BEST_CAPTIONER), ("beam 3", "caption_beam3", BEST_CAPTIONER_BEAM3))
KINDS = ("list", "count", "colour", "shape", "size", "position", "exists", "region", "open/colour", "open/shape",
         "open/position", "open/exists")
FOLLOW = ("follow/size", "follow/size-yes/no", "follow/where", "follow/relation", "follow/position", "follow/colour",
          "follow/shape")


def dialogue_scores(model: Any, folder: Path, split: str, paths: set[str], image: Any) -> dict[str, float]:
    """The old chat task's own test dialogues (read_dialogues, 2 per image), answered by the assistant."""
    dialogues = [d for d in read_dialogues(folder, split, 2) if d.image in paths]
    queries = [Query(d.image, turn_messages(d.turns, t), d.turns[t].kind, d.turns[t].answer)
               for d in dialogues for t in range(len(d.turns))]
    replies = run_queries(model, queries, image, progress=False)
    return dialogue_report([d.turns[t] for d in dialogues for t in range(len(d.turns))], replies)


def long_scores(model: Any, scenes: list, captions: dict[str, list[str]], image: Any) -> dict[str, Any]:
    """One request after 6 earlier turns (eval.assistant.long_queries): the model's own prompt, which keeps the
    earlier turns it was trained with (assistant.max_earlier_turns), beside every earlier turn that fits."""
    queries = long_queries(scenes, captions, earlier=LONG_EARLIER)
    kept = model.assistant_cfg.max_earlier_turns
    out: dict[str, Any] = {"earlier_turns": LONG_EARLIER, "kept": kept, "requests": len(queries)}
    for name, keep in (("accuracy", kept), ("accuracy/all_turns", 0)):
        model.assistant_cfg.max_earlier_turns = keep
        replies = run_queries(model, queries, image, progress=False)
        out[name] = sum(map(reply_correct, queries, replies)) / len(queries)
    model.assistant_cfg.max_earlier_turns = kept
    return out


def old_chat_scores(chat_dir: Path, folder: Path, split: str, paths: set[str]) -> dict[str, float] | None:
    if not (chat_dir / "config.json").is_file():
        return None
    chat = load(chat_dir)
    dialogues = [d for d in read_dialogues(folder, split, 2) if d.image in paths]
    replies = [chat.chat(d.image, turn_messages(d.turns, t)) for d in dialogues for t in range(len(d.turns))]
    return dialogue_report([d.turns[t] for d in dialogues for t in range(len(d.turns))], replies)


def measure(model_dir: Path, chat_dir: Path, images: int, retry: bool = True) -> dict[str, Any]:
    """Every figure of the page for one model; `retry=False` bans <retry> (a model trained to take a point back
    then keeps its first points: what taking them back is worth, on the same model)."""
    data = DataConfig(format="shapes", n=5000, seed=0)
    folder = shapes_folder(data)
    model = load(model_dir)
    model.assistant_cfg.retry = retry
    stats = ObjectStats.from_scenes([scene for _, _, scene in read_scenes(folder, "train")])
    out: dict[str, Any] = {}
    for split in ("test", "heldout"):
        started = time.time()
        paths = [p for _, p, _ in read_scenes(folder, split)][: images or None]
        bank = ImageBank(paths, model.cfg.image_size, progress=False)

        def image(path: str, bank: ImageBank = bank) -> Any:
            return bank[bank.index[path]]

        captions = {r.id: r.captions for r in load_split(data, split)}
        report = assistant_report(model, folder, split, captions, image, images, stats, progress=False)
        describe = [q for q in scene_queries(read_scenes(folder, split)[: images or None], captions)
                    if q.kind == "describe"]
        beam = run_queries(model, describe, image, progress=False, generation=GenerationConfig(beam_size=3))
        report["caption_beam3"] = caption_report(describe, beam, ObjectTruth.shapes(folder))
        report["dialogues"] = dialogue_scores(model, folder, split, set(paths), image)
        report["long"] = long_scores(model, read_scenes(folder, split)[: images or None], captions, image)
        report["old_chat_live"] = old_chat_scores(chat_dir, folder, split, set(paths))
        report["seconds"] = round(time.time() - started, 1)
        out[split] = report
    return out


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def mark(x: float | None, target: float) -> str:
    return "—" if x is None else f"{100 * x:.1f}" + ("" if x >= target else " ✗")


def request_kinds(split: dict[str, Any]) -> dict[str, float]:
    """accuracy/<kind> of every request type a target covers: not captions, declines or the follow-ups' mean."""
    return {k: v for k, v in split.items() if k.startswith("accuracy/") and not k.startswith("accuracy/scope")
            and k not in ("accuracy/describe", "accuracy/absent", "accuracy/follow-up")}


def target_lines(results: dict[str, Any]) -> list[str]:
    """Each issue-25 target with the measured figure and whether it is met."""
    out = []
    for split, floor in (("test", 0.95), ("heldout", 0.90)):
        r = results["splits"][split]
        kinds = request_kinds(r)
        worst = min(kinds, key=kinds.get)
        low = ", ".join(f"{k.removeprefix('accuracy/')} {100 * v:.1f}" for k, v in sorted(kinds.items()) if v < floor)
        out.append(f"- every type >= {100 * floor:.0f}% on {split}: {'met' if not low else 'missed'} "
                   f"(lowest {worst.removeprefix('accuracy/')} {100 * kinds[worst]:.1f}%"
                   + (f"; below: {low}" if low else "") + ")")
        pope = r["pope"]
        ok = all(m["accuracy"] >= 0.95 and abs(m["yes_rate"] - 0.5) <= 0.05 for m in pope.values())
        out.append(f"- POPE on {split} (accuracy >= 95%, yes-rate 45-55%): {'met' if ok else 'missed'} ("
                   + ", ".join(f"{k} {100 * m['accuracy']:.1f}% / yes {100 * m['yes_rate']:.1f}%" for k, m in pope.items())
                   + ")")
        declines = {k: r[k] for k in ("decline/absent", "decline/scope", "decline/scope/unseen") if k in r}
        out.append(f"- declines >= 95% on {split}: {'met' if min(declines.values()) >= 0.95 else 'missed'} ("
                   + ", ".join(f"{k.removeprefix('decline/')} {100 * v:.1f}%" for k, v in declines.items()) + ")")
        follow = r["dialogues"]["accuracy/follow-up"]
        out.append(f"- follow-ups >= 95% on {split} (the chat task's dialogues): {'met' if follow >= 0.95 else 'missed'}"
                   f" ({100 * follow:.1f}%)")
        for decoding, entry, bests in CAPTION_DECODINGS:
            if entry in r:
                cider, best = r[entry]["cider"], bests[split]
                out.append(f"- captions within 5% of the best captioner on {split}, {decoding} both: "
                           f"{'met' if cider >= 0.95 * best else 'missed'} (CIDEr-D {cider:.3f} vs {best}, "
                           f"{100 * (cider / best - 1):+.1f}%)")
    return out


def bundled_line() -> list[str]:
    """Which model the package ships (bench/bundle_assistant.py) and where its figures are."""
    path = RESULTS.parent / "assistant_bundled.json"
    if not path.is_file():
        return []
    bundled = json.loads(path.read_text())
    return [f"The bundled assistant (`polymodal chat shapes_assistant IMAGE`, the page's conversations) is "
            f"`{bundled['model']}` in float16: {bundled['note']} Its figures: docs/results/assistant_bundled.json.", ""]


def page(results: dict[str, Any]) -> str:
    s = results["splits"]
    t, h = s["test"], s["heldout"]
    lines = ["# One assistant: answers, declines, hallucination", "",
             f"Model `{results['model']}` ({results['parameters_millions']} M parameters), trained by the commands "
             f"at the end in {results['train_wall_minutes']} min on {results['machine']}.",
             f"Scored with `{results['command']}` on the first {results['images']} images of each split "
             "(Shapes World n=5000, seed 0): greedy replies, every request asked after the reference conversation "
             "before it, exact match after answer normalisation (a list or region reply may name its objects in any order). ✗ = below the issue-25 target "
             "(>= 95% test / >= 90% held-out per type).", "",
             *bundled_line(), "## Targets", "", *target_lines(results), "",
             "## Per request type", "", "| type | test | held-out |", "|---|---|---|"]
    for kind in [*KINDS, *FOLLOW]:
        key = f"accuracy/{kind}"
        if key in t or key in h:
            lines.append(f"| {kind} | {mark(t.get(key), 0.95)} | {mark(h.get(key), 0.90)} |")
    lines.append(f"| all follow-ups | {mark(t.get('accuracy/follow-up'), 0.95)} | "
                 f"{mark(h.get('accuracy/follow-up'), 0.95)} |")
    pointing = sorted({k for k in (*t, *h) if k.startswith("pointing/")}, key=lambda k: (k == "pointing/all", k))
    if pointing:
        lines += ["", "## Pointing before answering", "",
                  "Position, relation and count replies first write the centres of the objects they are about as "
                  "location tokens (data/grounding.py), then their words. Right = as many points as the true objects, "
                  "each in the true centre's cell of the 12 x 12 grid or the one beside it.", "",
                  "| reply | test | held-out |", "|---|---|---|"]
        lines += [f"| {k.removeprefix('pointing/')} | {pct(t.get(k))} | {pct(h.get(k))} |" for k in pointing]
    if "retry/share" in t:
        lines += ["", "## Taking a point back", "",
                  "Of the replies that should point: those that wrote `<retry>` after a point and pointed again "
                  "(data/grounding.py), and, of those, the share whose taken-back points were right after all and "
                  "the share whose final points are right.", "", "| | test | held-out |", "|---|---|---|"]
        lines += [f"| {name} | {pct(t.get(k))} | {pct(h.get(k))} |" for k, name in (
            ("retry/share", "took a point back"), ("retry/first_right", "the taken-back point was right"),
            ("retry/final_right", "the final point is right"))]
    lines += ["", "## Declines (target >= 95%)", "",
              "| request | test | held-out |", "|---|---|---|"]
    for key, name in (("decline/absent", "question about an absent object"),
                      ("decline/scope", "out of scope, trained phrasings or unknown words"),
                      ("decline/scope/unseen", "out of scope, phrasings never trained on (incl. Spanish, French, German)"),
                      ("false_decline", "answerable request declined (lower is better)")):
        lines.append(f"| {name} | {pct(t.get(key))} | {pct(h.get(key))} |")
    if "long" in t:
        long_t, long_h = t["long"], h.get("long", {})
        lines += ["", f"## Long conversations: one request after {long_t['earlier_turns']} earlier turns", "",
                  "The instruction mixture's conversations have 3 turns at most. One request per image of any kind "
                  "but describe (eval.assistant.long_queries), after earlier ones with their true replies.", "",
                  "| prompt | test | held-out |", "|---|---|---|",
                  f"| the last {long_t['kept']} earlier turns (the model's default, assistant.max_earlier_turns) | "
                  f"{pct(long_t['accuracy'])} | {pct(long_h.get('accuracy'))} |",
                  f"| every earlier turn that fits the positions | {pct(long_t['accuracy/all_turns'])} | "
                  f"{pct(long_h.get('accuracy/all_turns'))} |"]
    lines += ["", "## POPE-style probe: \"is there a <colour> <shape> in the image?\"", "",
              "Up to 3 present objects per image and as many absent ones (target: accuracy >= 95%, yes-rate "
              "50 ± 5%).", "", "| split | sampling | accuracy | precision | recall | F1 | yes-rate | questions |",
              "|---|---|---|---|---|---|---|---|"]
    for name, split in (("test", t), ("held-out", h)):
        for sampling, m in split["pope"].items():
            lines.append(f"| {name} | {sampling} | {pct(m['accuracy'])} | {pct(m['precision'])} | {pct(m['recall'])} "
                         f"| {pct(m['f1'])} | {pct(m['yes_rate'])} | {m['questions']} |")
    target = {k: round(0.95 * v, 3) for k, v in BEST_CAPTIONER.items() if k != "model"}
    lines += ["", "## Captions of the same checkpoint (\"describe the image\")", "",
              f"Best captioner: {BEST_CAPTIONER['model']} CIDEr-D {BEST_CAPTIONER['test']} test, "
              f"{BEST_CAPTIONER['heldout']} held-out; within 5% means >= {target['test']} / >= {target['heldout']}.", "",
              "| split | decoding | CIDEr-D (PTB) | best captioner, same decoding | difference | CHAIR-i | CHAIR-s "
              "| captions |", "|---|---|---|---|---|---|---|---|"]
    for name, split, key in (("test", t, "test"), ("held-out", h, "heldout")):
        for decoding, entry, bests in CAPTION_DECODINGS:
            if entry in split:
                c, best = split[entry], bests[key]
                lines.append(f"| {name} | {decoding} | {c['cider']:.3f} | {best} | {100 * (c['cider'] / best - 1):+.1f}% "
                             f"| {pct(c['chair_i'])} | {pct(c['chair_s'])} | {c['captions']} |")
    lines += ["", "## Beside the old chat model (the chat task's own test dialogues, 2 per image)", ""]
    old = results.get("old_chat") or {}
    lines += [f"Old chat model: {old.get('note', '')}", "",
              "| model | test turn 1 | test follow-ups | held-out turn 1 | held-out follow-ups |", "|---|---|---|---|---|"]
    for name, split in (("this assistant", "dialogues"), ("old chat model", "old")):
        td = t[split] if split == "dialogues" else old.get("test")
        hd = h[split] if split == "dialogues" else old.get("heldout")
        if td:
            lines.append(f"| {name} | {pct(td.get('accuracy/turn-1'))} | {pct(td.get('accuracy/follow-up'))} | "
                         f"{pct((hd or {}).get('accuracy/turn-1'))} | {pct((hd or {}).get('accuracy/follow-up'))} |")
    lines += ["", "The old chat model cannot count, describe, list or decline: those rows have no counterpart.", ""]
    if results.get("notes"):
        lines += ["## What was tried", "", *(f"- {n}" for n in results["notes"]), ""]
    for label, prev in results.get("previous", {}).items():
        how = prev.get("how", "the training task's end check")
        lines += [f"## Earlier run: {label}", "", f"From `{prev['file']}` ({how}, first "
                  f"{prev['test']['images']} images per split). The label says how it differs from the model above.", "",
                  "| type | test | held-out |", "|---|---|---|"]
        for key in sorted(k for k in prev["test"] if k.startswith(("accuracy/", "decline/"))):
            lines.append(f"| {key} | {pct(prev['test'].get(key))} | {pct(prev['heldout'].get(key))} |")
        lines.append(f"| caption CIDEr-D | {prev['test']['caption']['cider']:.3f} | "
                     f"{prev['heldout']['caption']['cider']:.3f} |")
        lines.append("")
    lines += [
              "## Commands", "", "```", *results["train_commands"], results["command"], "```", ""]
    return "\n".join(lines)


def without_notes(argv: list[str]) -> list[str]:
    """The arguments as the page shows them: the --note texts are on the page already, and --measured only says
    the figures were measured already by this same command."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith(("--note=", "--measured=")):
            skip = False
            continue
        skip = arg in ("--note", "--measured")
        if not skip:
            out.append(arg)
    return out


def earlier_runs(pairs: list[str]) -> dict[str, Any]:
    """--previous LABEL=FILE: each file's figures under its label (a `measure` result, or a training run's
    metrics.json: its end check)."""
    out = {}
    for label, file in (p.rsplit("=", 1) for p in pairs):  # a label may hold "="
        figures = json.loads(Path(file).read_text())
        how = {"how": "bench/assistant.py, greedy"} if "dialogues" in figures.get("test", {}) else {}
        out[label] = {"file": file, **how, **figures}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "runs/assistant/model")
    parser.add_argument("--chat", type=Path, default=ROOT / "runs/chat/model")
    parser.add_argument("--images", type=int, default=500, help="images per split (0 = all)")
    parser.add_argument("--previous", action="append", default=[],
                        help="LABEL=FILE: an earlier run's figures (a training run's metrics.json, or "
                             "bench/assistant.py `measure` JSON), also with --redraw")
    parser.add_argument("--note", action="append", default=[], help="a finding to list under 'What was tried'")
    parser.add_argument("--carry", default="", metavar="LABEL",
                        help="keep the page's earlier notes and runs, and its current model's figures as an earlier "
                             "run with this label (a new default replacing the one measured there)")
    parser.add_argument("--train-minutes", type=float, default=None, help="wall time of the training run")
    parser.add_argument("--train-command", action="append", default=[],
                        help="a command that trained the model, as the page should show it (repeat for several)")
    parser.add_argument("--measured", type=Path, default=None,
                        help="figures this script's `measure` wrote already for --model (e.g. run side by side with "
                             "another model's): used instead of measuring again")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: redraw the page from the results file, adding the --note texts")
    args = parser.parse_args()
    if args.redraw:
        results = json.loads(RESULTS.read_text())
        results["notes"] = [*results.get("notes", []), *args.note]
        results["previous"] = {**earlier_runs(args.previous), **results.get("previous", {})}  # newest first
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        PAGE.write_text(page(results))
        print(f"redrew {PAGE}")
        return
    splits = json.loads(args.measured.read_text()) if args.measured else measure(args.model, args.chat, args.images)
    model = load(args.model)
    old = {"note": "live, same dialogues", "test": splits["test"]["old_chat_live"],
           "heldout": splits["heldout"]["old_chat_live"]}
    if old["test"] is None:
        published = json.loads((ROOT / "docs/results/chat.json").read_text())
        old = {"note": f"{args.chat} not available here, so not re-measured; its published figures "
                       f"(docs/results/chat.json, {published['date']}, all 500 images per split, the same dialogue "
                       f"generator) are quoted", "test": published["test"], "heldout": published["heldout"]}
    notes, previous = list(args.note), {}
    if args.carry:  # read before it is overwritten
        before = json.loads(RESULTS.read_text())
        notes = [*before.get("notes", []), *notes]
        previous = {args.carry: {"file": f"{RESULTS.relative_to(ROOT)} of {before['model']}",
                                 "how": "bench/assistant.py, greedy",
                                 **before["splits"]}, **before.get("previous", {})}
    previous |= earlier_runs(args.previous)
    results = {"model": str(args.model), "images": args.images, "machine": machine(),
               "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               "train_commands": args.train_command or ["OMP_NUM_THREADS=1 polymodal train configs/assistant.yaml"],
               "train_wall_minutes": args.train_minutes,
               "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python bench/assistant.py "
                          + shlex.join(without_notes(sys.argv[1:])),
               "previous": previous, "notes": notes, "best_captioner": BEST_CAPTIONER, "old_chat": old,
               "splits": splits}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    PAGE.write_text(page(results))
    print(f"wrote {PAGE} and {RESULTS}")


if __name__ == "__main__":
    main()
