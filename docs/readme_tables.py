"""The README's results blocks, each drawn from the JSON files under docs/results/: no measured figure is
typed here (what is typed is setup: "8 clients", "64 visual tokens", the configs' values).

Every builder returns the markdown between its `<!-- NAME:begin -->` / `<!-- NAME:end -->` markers
(docs/readme_blocks.py puts them in place and checks them). Results files: captioning.json,
retrieval.json, vqa.json, chat.json, reliability.json, make_test.json (each with the "command" that
reproduces it) and the benchmark histories bench_<name>.json (bench/_history.py: every run kept,
ranges taken over the runs of the newest series). Targets (5x, 2x) are goals, not measurements.
A sentence that judges (the best captioner, beam search helps every model) is checked against the
figures, and the build stops when the figures no longer bear it out.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
if str(ROOT / "bench") not in sys.path:  # appended: the benchmark scripts' names must not shadow others
    sys.path.append(str(ROOT / "bench"))
import _history  # noqa: E402

QA_ORDER = ("colour", "shape", "count", "position", "yes/no")  # Shapes World's question types, as listed
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
TARGETS = {"decode": 5.0, "serve": 2.0}  # speed-ups the benchmarks were written to reach (x)


def results(name: str) -> dict[str, Any]:
    """docs/results/NAME.json."""
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def pct(value: float, scale: float = 100.0, digits: int = 1) -> str:
    """A share as the README prints it: one decimal (DIGITS), and a plain "100%".

    Example:
        >>> pct(0.987), pct(1.0), pct(98.0, scale=1), pct(0.31, digits=0)
        ('98.7%', '100%', '98.0%', '31%')
    """
    text = f"{value * scale:.{digits}f}"
    return ("100" if float(text) == 100 else text) + "%"


def claim(holds: bool, sentence: str) -> None:
    """Stop the build when a sentence the README makes is no longer true of the figures."""
    if not holds:
        raise SystemExit(f"README: the figures no longer support {sentence!r}; rewrite it in docs/readme_tables.py")


def count_words(n: int) -> str:
    return WORDS.get(n, str(n))


# Captioning -------------------------------------------------------------------------------------------


def caption_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """captioning.json's rows by label."""
    return {row["label"]: row for row in data["rows"]}


def cider(row: dict[str, Any], decoding: str = "beam 3", split: str = "test") -> float:
    return row["scores"][decoding][split]["cider"]


def caption_table(data: dict[str, Any]) -> str:
    """The captioners x decoding table of docs/captioning.md and the README."""
    lines = ["| model | decoding | test BLEU-4 | test METEOR | test ROUGE-L | test CIDEr-D | heldout BLEU-4 | "
             "heldout CIDEr-D | parameters | CPU training time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        for decoding, s in row["scores"].items():
            t, h = s["test"], s["heldout"]
            lines.append(f"| {row['label']} | {decoding} | {t['bleu4']:.3f} | {t['meteor']:.3f} | {t['rouge_l']:.3f} | "
                         f"**{t['cider']:.3f}** | {h['bleu4']:.3f} | {h['cider']:.3f} | "
                         f"{row['parameters_millions']:.2f} M | {_minutes(row.get('training_minutes'))} |")
    return "\n".join(lines)


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} min"


def captioning() -> str:
    """README "Results on Shapes World": what was scored, and the table."""
    data = results("captioning")
    d = data["data"]
    return (f"Trained on CPU with the configs in `configs/`, evaluated on {d['test_images']} test images and "
            f"{d['heldout_images']} images of the\nheld-out compositions (colour-shape pairs never seen in training), "
            f"{d['references']} references each, pycocoevalcap\n(PTB tokenizer; CIDEr-D on the usual x10 scale). "
            f"Full table and notes: [docs/captioning.md](docs/captioning.md).\n\n{caption_table(data)}")


def _gains(rows: dict[str, dict[str, Any]], decoding: str) -> list[float]:
    """CIDEr-D on test that SCST adds to each model that has an SCST row."""
    return [cider(rows[f"{base} + SCST"], decoding) - cider(row, decoding)
            for base, row in rows.items() if f"{base} + SCST" in rows]


def caption_findings() -> str:
    """README "What the numbers say": the bullets under the captioning table, their figures computed."""
    data = results("captioning")
    rows, notes = caption_rows(data), data["notes"]
    seed, att, refine = rows["seed (ResNet-18 + LSTM)"], rows["attention LSTM"], rows["attention LSTM + refine"]
    prefix, prefix_scst = rows["prefix LM"], rows["prefix LM + SCST"]
    bases = [r for label, r in rows.items() if "+" not in label]
    claim(all(cider(prefix) >= cider(r) for r in bases), "the image-prefix LM is the best captioner")
    claim(cider(att) > 3 * cider(seed), "attention wins by a wide margin")
    claim(all(cider(r) > cider(r, "greedy") for r in rows.values()), "beam search helps every model")
    refine_gain = {d: cider(refine, d) - cider(att, d) for d in ("greedy", "beam 3")}
    claim(refine_gain["greedy"] > 0 >= refine_gain["beam 3"], "refinement helps greedy, not beam 3")
    beam_gains, greedy_gains = _gains(rows, "beam 3"), _gains(rows, "greedy")
    claim(min(beam_gains + greedy_gains) > 0, "SCST adds to every model")
    kv = _history.load_history("kv_cache")
    kv_low = min(_history.figure_range(_history.comparable(kv), k)[0] for k in kv["figures"])
    kv_high = max(_history.figure_range(_history.comparable(kv), k)[1] for k in kv["figures"])
    att_gap = cider(att) - cider(att, split="heldout")
    return f"""What the numbers say:
- **The decoder-only image-prefix LM is the best captioner** (LLaVA / nanoVLM style: 64 visual tokens
  prepended to the caption in a causal transformer LM): CIDEr-D {cider(prefix):.2f} on test and \
{cider(prefix, split='heldout'):.2f} on the held-out
  compositions with beam 3, where the attention LSTM loses {att_gap:.1f} CIDEr-D on held-out. **SCST** (CIDEr-D
  reward, greedy baseline) adds {min(beam_gains):+.2f} to {max(beam_gains):+.2f} with beam 3 and \
{min(greedy_gains):+.1f} to {max(greedy_gains):+.1f} greedy to every model; the prefix
  LM + SCST reaches {cider(prefix_scst):.2f} / {cider(prefix_scst, split='heldout'):.2f}. Details, the KV cache \
({kv_low:.0f}-{kv_high:.0f}x faster generation) and local GPT-2
  weights: [docs/transformers.md](docs/transformers.md).
- **Attention wins by a wide margin.** The seed design squeezes the image into one 128-d vector that
  only sets the LSTM's initial state; from scratch at 64 px it learns the caption templates and the
  object count but mostly guesses colours and shapes (CIDEr-D {cider(seed):.1f}). Spatial attention over an 8x8 grid
  (CIDEr-D {cider(att):.1f}, BLEU-4 {att['scores']['beam 3']['test']['bleu4']:.2f}) names most objects; \
the heatmaps show each colour and shape word
  attending to its object (how many named objects are really there: the next table).
- **Beam search helps** every model ({cider(att) - cider(att, 'greedy'):+.2f} CIDEr-D for the attention LSTM over \
greedy).
- **Refinement** (a deliberation pass that re-reads the image and the first draft) improves greedy
  decoding by {refine_gain['greedy']:+.2f} CIDEr-D on test and \
{cider(refine, 'greedy', 'heldout') - cider(att, 'greedy', 'heldout'):+.2f} on held-out, but not beam 3 \
({refine_gain['beam 3']:+.2f}): the second pass fixes
  greedy's slips, which beam search already avoids. It is optional and off by default.
- **Held-out compositions** cost about {att_gap:.1f} CIDEr-D: the model names unseen colour-shape pairs less
  reliably, the generalisation gap Shapes World's `heldout` split exists to measure.
- During training the validation exact match (the greedy caption equals one of the 5 references word for
  word) of the attention LSTM reached {pct(notes['attention LSTM validation exact match']['value'], digits=0)}, token \
accuracy {pct(notes['attention LSTM validation token accuracy']['value'], digits=0)}."""


def truth() -> str:
    """README "Are the captions true?": object hallucination per captioner, from hallucination.json."""
    data = results("hallucination")
    d = data["data"]
    lines = ["| model | test CHAIR-i | test CHAIR-s | test exact objects | test binding | test CIDEr-D | "
             "heldout CHAIR-i | heldout exact objects | heldout CIDEr-D | weights |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        t, h = row["scores"]["test"], row["scores"]["heldout"]
        lines.append(f"| {row['label']} | **{pct(t['chair_i'])}** | {pct(t['chair_s'])} | {pct(t['exact_objects'])} | "
                     f"{pct(t['binding_accuracy'])} | {t['cider']:.2f} | **{pct(h['chair_i'])}** | "
                     f"{pct(h['exact_objects'])} | {h['cider']:.2f} | {row['weights_mb']:.1f} MB |")
    return (f"CIDEr-D rewards template words even when the objects are wrong, so every captioner is also scored on "
            f"whether the\nobjects it names exist (CHAIR-i: named objects that are not in the image; CHAIR-s: "
            f"captions with any;\nexact objects: the caption names exactly the scene's objects; binding: colour and "
            f"size attached to the right\nshape), {d['decoding']}, all {d['test_images']} test and "
            f"{d['heldout_images']} held-out images, by `polymodal evaluate` (eval/hallucination.py).\n"
            f"Reproduce: `{data['command']}`.\n\n" + "\n".join(lines) + "\n\n" + _truth_targets(data["rows"]))


TRUTH_TARGETS = {("test", "chair_i"): 0.02, ("heldout", "chair_i"): 0.05, ("test", "exact_objects"): 0.90}
TRUTH_NAMES = {"chair_i": "CHAIR-i", "exact_objects": "exact objects"}


def _truth_targets(rows: list[dict[str, Any]]) -> str:
    """Where the best captioner stands against the targets (lower CHAIR-i, higher exact objects)."""
    parts = []
    for (split, key), target in TRUTH_TARGETS.items():
        lower = key == "chair_i"
        best = (min if lower else max)(rows, key=lambda r: r["scores"][split][key])
        value = best["scores"][split][key]
        met = value <= target if lower else value >= target
        parts.append(f"{split} {TRUTH_NAMES[key]} {'<=' if lower else '>='} {pct(target, digits=0)}: best "
                     f"{pct(value)} ({best['label']}, {'met' if met else 'not met'})")
    return "Targets: " + "; ".join(parts) + "."


def captioning_page() -> str:
    """docs/captioning.md, whole: what was scored, the table, how long training took, the command."""
    data = results("captioning")
    d, rows = data["data"], caption_rows(data)
    rate = data["notes"].get("attention LSTM alone, steps/s", {}).get("value")
    att_steps = rows["attention LSTM"]["steps"] if "attention LSTM" in rows else None
    alone = (f"; alone, the attention LSTM trains at about {rate} steps/s ({att_steps} steps in about "
             f"{att_steps / rate / 60:.0f} minutes)" if rate and att_steps else "")
    steps = ", ".join(f"{row['label']} {row['steps']}" for row in data["rows"] if row.get("steps"))
    pretrain = data.get("lm_pretraining_steps")
    pretrain_note = f" (the prefix LM after {pretrain} steps of text-only LM pretraining)" if pretrain else ""
    steps = f" Steps: {steps}{pretrain_note}." if steps else ""
    return (f"# Captioning results on Shapes World\n\n{d['test_images']} test images and {d['heldout_images']} "
            f"held-out-composition images (Shapes World n={d['n']}, seed {d['seed']}), {d['references']} references "
            f"each, scored by pycocoevalcap (PTB tokenizer; CIDEr-D on coco-caption's x10 scale).\n\n"
            f"{caption_table(data)}\n\nTraining times are wall-clock on the 2-core reference machine while other "
            f"training jobs shared it{alone}. Rows \"+ refine\" and \"+ SCST\" give the time of that "
            f"second stage alone, on top of the row above.{steps} See "
            f"[transformers.md](transformers.md) for the transformer models and SCST.\n\n"
            f"Figures, and where each comes from: [results/captioning.json](results/captioning.json).\n\n"
            f"Reproduce: `{data['command']}`\n")


# Retrieval, VQA, the assistant and drawing ---------------------------------------------------------------


def assistant_row(data: dict[str, Any]) -> tuple[str, str, str]:
    """The one instruction assistant: its weakest request kind, POPE and declines on test (assistant.json)."""
    t = data["splits"]["test"]
    kinds = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("accuracy/") and k.count("/") == 1
             and k not in ("accuracy/describe", "accuracy/absent", "accuracy/follow-up", "accuracy/scope")}
    worst = min(kinds, key=kinds.get)
    adversarial = t["pope"]["adversarial"]
    stages = list(dict.fromkeys(re.findall(r"configs/(\S+?\.yaml)", " ".join(data["train_commands"]))))
    chain = f"`configs/{stages[0]}`" + (", then " + ", ".join(f"`{c}`" for c in stages[1:]) if stages[1:] else "")
    return (f"one instruction assistant ({len(kinds)} request kinds, declines, captions), "
            f"{data['images']} test images",
            f"image-prefix LM on the instruction mixture ({chain})",
            f"POPE adversarial **{pct(adversarial['accuracy'])}** (yes-rate {pct(adversarial['yes_rate'])}); "
            f"absent objects declined {pct(t['decline/absent'])}; weakest kind {worst} {pct(kinds[worst])}; "
            f"captions CIDEr-D {t['caption']['cider']:.3f}; targets in [assistant.md](docs/assistant.md)")


def drawing_row(data: dict[str, Any]) -> tuple[str, str, str]:
    """Text -> image, the default family, GenEval-style fully-correct rates (generation_scenes.json)."""
    test, held = data["groups"]["test"], data["heldout_compositions"]
    return (f"text -> image, {test['single_object']['n']} test prompts per group",
            "plans, then draws: a transformer writes each object's words and box, a sprite renderer draws them "
            "(`configs/text_to_image.yaml`)",
            f"fully correct: single object **{pct(test['single_object']['correct'])}**, two objects in a relation "
            f"**{pct(test['position']['correct'])}**, held-out colour-shape pairs "
            f"{pct(held['single_object']['correct'])}; [generation.md](docs/generation.md)")


def tasks() -> str:
    """README "Retrieval, VQA, the assistant and drawing": one row per task, from docs/results/."""
    ret, vqa, chat = results("retrieval"), results("vqa"), results("chat")
    true, strict, ceiling = ret["true_of_image"], ret["strict"], ret["strict_ceiling"]
    swap, base_swap = ret["hard_negative_captions"]["swap"], ret["baseline"]["hard_negative_captions"]["swap"]
    zs = ret["zero_shot"]
    test, heldout = vqa["test"], vqa["heldout"]
    found = [k.split("/", 1)[1] for k in test if k.startswith("accuracy/")]
    kinds = ", ".join(sorted(found, key=lambda k: (QA_ORDER.index(k) if k in QA_ORDER else len(QA_ORDER), k)))
    t = chat["test"]
    rows = [
        (f"image -> text retrieval, {true['images']}-image test gallery x {true['texts']} captions",
         "CLIP-style dual encoder with NegCLIP hard negative captions and batches of look-alike captions "
         "(`configs/contrastive.yaml`)",
         f"R@1 **{pct(true['i2t_r1'], 1)}** true-of-image ({pct(strict['i2t_r1'], 1)} strict)"),
        ("text -> image retrieval, same gallery", "same",
         f"R@1 **{pct(true['t2i_r1'], 1)}** true-of-image ({pct(strict['t2i_r1'], 1)} strict, ceiling "
         f"{pct(ceiling['t2i_r1'], 1)})"),
        ("image vs its caption with two colours swapped (binding)", "same; without hard negatives",
         f"**{pct(swap, 1)}** vs {pct(base_swap, 1)} (chance: 50%)"),
        ("zero-shot classification, one-object test images", "same, prompt ensembles",
         f"colour **{pct(zs['colour']['accuracy'])}**, shape **{pct(zs['shape']['accuracy'])}**"),
        (f"VQA ({kinds}), {test['questions']} test questions",
         "single-stream fusion over words + regions (`configs/vqa.yaml`)",
         f"**{pct(test['accuracy'])}** test, **{pct(heldout['accuracy'])}** held-out compositions; position "
         f"{pct(test['accuracy/position'])}"),
        (f"multi-turn assistant, {t['turns']} test turns",
         "BiLSTM + grounding + attention LSTM decoder (`configs/chat.yaml`)",
         f"**{pct(t['accuracy'])}** exact answers (turn 1 {pct(t['accuracy/turn-1'])}, follow-ups "
         f"{pct(t['accuracy/follow-up'])})"),
        assistant_row(results("assistant")), drawing_row(results("generation_scenes"))]
    return "\n".join(["| task | model | result |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


# Serving, performance ----------------------------------------------------------------------------------


def fig(history: dict[str, Any], key: str, bold: bool = False, runs: list[dict[str, Any]] | None = None) -> str:
    """Figure KEY over RUNS (default: the newest series of runs), as a range where the runs differ."""
    runs = _history.comparable(history) if runs is None else runs
    text = _history.show(history, key, list(_history.figure_range(runs, key)))
    return f"**{text}**" if bold else text


def serving() -> str:
    """README serving paragraph: dynamic batching's gain at 8 clients, over the runs of bench_serve.json."""
    h = _history.load_history("serve")
    runs = _history.comparable(h)
    claim(all(r["figures"]["throughput, continuous"] < r["figures"]["throughput, whole batches"] for r in runs),
          "continuous batching is slower than whole batches on a CPU")
    off = _history.figure_range(runs, "p50 latency, off (ms)")
    whole = _history.figure_range(runs, "p50 latency, whole batches (ms)")
    share = [r["figures"]["p50 latency, whole batches (ms)"] / r["figures"]["p50 latency, off (ms)"] for r in runs]
    return (f"Concurrent caption requests are batched into one forward pass (`--max-batch 8 --max-wait-ms 25`):\n"
            f"at 8 clients that serves {fig(h, 'throughput, whole batches')} the requests per second of no batching "
            f"({fig(h, 'requests per CPU-second, whole batches')} per CPU-second),\nat {_history.span(min(share) * 100, max(share) * 100, '.0f', '%')} of the median "
            f"latency ({_history.span(*whole, '.0f', '')} vs {_history.span(*off, '.0f', ' ms')}; "
            f"{_runs(runs)}: "
            f"[benchmarks](docs/benchmarks.md#serving-dynamic-batching-off-by-whole-batches-continuous);\n"
            f"`--continuous` batching is there too, measured slower on a CPU: "
            f"[serving](docs/serving.md#continuous-batching---continuous)).")


def measured(history: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    """The runs of the newest series that measured every one of KEYS (a row's figures share its runs)."""
    return [r for r in _history.comparable(history) if all(k in r["figures"] for k in keys)]


def _runs(runs: list[dict[str, Any]]) -> str:
    """How many runs: "four runs"."""
    n = _history.run_count(runs)
    return f"{count_words(n)} runs" if n > 1 else "one run"


def _target(name: str, low: float) -> str:
    return f"target {TARGETS[name]:g}x {'met' if low >= TARGETS[name] else 'not met'}"


def performance() -> str:
    """README "Performance and scale": the intro and one row per benchmark, from docs/results/bench_*.json."""
    h = {name: _history.load_history(name) for name in
         ("encoder", "feature_cache", "decode", "kv_cache", "serve", "ddp", "scaling", "gpu")}
    enc, dec, kv, srv, sc = h["encoder"], h["decode"], h["kv_cache"], h["serve"], h["scaling"]
    kv_runs = measured(kv, "greedy, 1 image", "beam 3, 16 images")
    srv_runs = measured(srv, "throughput, whole batches", "requests per CPU-second, whole batches")
    before = _history.earlier_series(dec)
    was = " / ".join(_history.show(dec, k, list(_history.figure_range(before, k))) for k in ("beam 3", "beam 5"))
    low3 = _history.figure_range(_history.comparable(dec), "beam 3")[0]
    gpu = ("GPU figures: [docs/benchmarks.md](docs/benchmarks.md#one-gpu-training-with-amp-decoding)"
           if h["gpu"]["runs"] else "GPU figures are still to be measured (`bash bench/gpu.sh`)")
    srv_low = _history.figure_range(_history.comparable(srv), "throughput, whole batches")[0]
    rows = [
        ("encoder: polymodal resnet18 vs plain torchvision eager, same batch",
         f"{fig(enc, 'polymodal')} (bf16 autocast {fig(enc, 'polymodal, bf16 autocast')}, channels_last "
         f"{fig(enc, 'polymodal, channels_last')}, torch.compile {fig(enc, 'polymodal, torch.compile')})"),
        ("training from the feature cache vs re-encoding (frozen ResNet-50 / ResNet-18, 224 px)",
         f"{fig(h['feature_cache'], 'seed LSTM, resnet50 224 px', True)} / "
         f"{fig(h['feature_cache'], 'seed LSTM, resnet18 224 px', True)} steps/s"),
        ("batched vs per-image beam search (bundled attention LSTM, 64 images, beam 3 / beam 5)",
         f"{fig(dec, 'beam 3')} / {fig(dec, 'beam 5')} (was {was} before "
         f"{_history.comparable(dec)[-1].get('series', 'the newest runs')}, where finished images leave the batch; "
         f"{_target('decode', low3)}" + ("" if low3 >= TARGETS["decode"] else
                                         ": the CNN costs the same per image in a batch") + ")"),
        ("prefix LM with vs without KV cache (30 tokens; greedy 1 image / beam 3, 16 images)",
         f"{fig(kv, 'greedy, 1 image', runs=kv_runs)} / {fig(kv, 'beam 3, 16 images', True, kv_runs)} "
         f"({_runs(kv_runs)})"),
        ("serving with vs without dynamic batching (8 clients, prefix LM, beam 3)",
         f"{fig(srv, 'throughput, whole batches', runs=srv_runs)} requests/s "
         f"({fig(srv, 'requests per CPU-second, whole batches', runs=srv_runs)} per CPU-second; "
         f"{_runs(srv_runs)}); {_target('serve', srv_low)}"),
        ("`torchrun` 2 CPU processes vs 1 (gloo, same global batch)",
         f"{fig(h['ddp'], '2 DDP processes vs 1 process, 1 thread')} (a busy 2-core machine; see docs/scaling.md)"),
        ("COCO-size annotations (600k captions)",
         f"read in {_history.span(*_history.figure_range(_history.comparable(sc), 'read 600k captions (s)'), '.0f', ' s')}"
         f", +{fig(sc, 'RSS growth, 600k captions (MB)')}, no image opened"),
        (f"image size 64 -> 512 px ({fig(sc, 'pixels, 512 vs 64 px')} pixels)",
         f"resnet18 {fig(sc, 'resnet18, 512 vs 64 px')} time, attention-LSTM step {fig(sc, 'train step, 512 vs 64 px')}")]
    intro = ("Measured side by side on a shared 2-core CPU (`make bench`; commands, dates and curves in\n"
             "[docs/benchmarks.md](docs/benchmarks.md), every run in `docs/results/bench_*.json`);\n"
             f"{gpu}.\n"
             "Training on COCO with 1 or 8 GPUs (`torchrun --nproc_per_node=8 -m polymodal train ...`):\n"
             "[docs/scaling.md](docs/scaling.md).")
    table = ["| what | measured |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return intro + "\n\n" + "\n".join(table)


# Reliability, the quick start ---------------------------------------------------------------------------


def reliability() -> str:
    """README "Reliability": the bad-input corpus, the kill points and the load test, from reliability.json."""
    r = results("reliability")
    corpus, crash, load = r["corpus"], r["crash"], r["load"]
    passed = "all pass" if corpus["passed"] == corpus["cases"] else f"{corpus['passed']} pass"
    claim(crash["survived"] == crash["kill_points"] and crash["bit_identical"], "every kill resumes bit-identical")
    return (f"Bad input gets one line naming the file and the fix, never a traceback: {corpus['cases']} generated cases\n"
            f"(broken, truncated and disguised images, annotations, configs, checkpoints and media) {passed}. "
            f"`kill -9` at\n{crash['kill_points']} moments of a training run, including inside the checkpoint writer, "
            f"resumes to bit-identical\nweights. Under {load['clients']} concurrent clients for {load['seconds']} s the "
            f"server answered {load['5xx']} 5xx with flat memory\n(+{load['rss_growth_second_half_mb']} MB from the first "
            f"half of the run to the second), and it shuts down without dropping requests.\nNo pickle is ever loaded. "
            f"Figures and commands: [docs/reliability.md](docs/reliability.md).")


def quickstart() -> str:
    """README's first commands; how long `make test` takes comes from make_test.json."""
    minutes = sum(results("make_test")["minutes"]) / len(results("make_test")["minutes"])
    return ("```bash\nmake demo   # creates .venv, installs, captions Shapes World with the bundled model, evaluates, "
            "draws heatmaps\nmake test   # installs if needed, runs the test suite (about "
            f"{minutes:.0f} minutes on 2 CPU cores, after the install)\n```")
