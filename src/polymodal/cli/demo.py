"""The main job behind `make demo`: the bundled models on Shapes World, end to end, in under a minute.

Writes Shapes World (once, into the cache), captions sample test images with beam search and n-best, asks
the bundled VQA model about them, searches the bundled index by text, holds one conversation with the bundled
assistant (it counts, names colours, points, and declines what is not there or not its job), asks one question
aloud (espeak-ng -> the bundled recognizer -> VQA -> a spoken answer), evaluates the test and held-out splits,
draws attention heatmaps and a training curve, and writes a markdown report. Every picture the report shows
sits beside it (images/, heatmaps/, search/, speech/) and is linked by a relative path, so the output folder
can be moved, zipped or shared as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..api import load
from ..assets import (
    ASSETS,
    BUNDLED_ASR,
    BUNDLED_ASSISTANT,
    BUNDLED_DUAL_ENCODER,
    BUNDLED_GENERATOR,
    BUNDLED_INDEX,
    BUNDLED_VQA,
    bundled_model_dir,
)
from ..checkpoint import write_json
from ..config import DataConfig
from ..data.datasets import load_split, shapes_folder
from ..errors import InputError
from ..eval.captions import evaluate_captioner, metrics_table
from ..eval.hallucination import ObjectTruth
from ..eval.viz import caption_heatmaps, plot_training_curves
from ..generate import GenerationConfig
from .app import out_folder

SAMPLES = 6
QUESTION = "how many shapes are there?"
SEARCH = "a large red circle"  # a text query over the bundled index of built-in scenes
CONVERSATION = ("how many shapes are there?", "is there a red square?", "what colour is the circle?",
                "and where is it?", "tell me a joke")  # issue 25's first conversation, and a follow-up about "it"
DRAW = ("a large red circle to the left of a small blue square", "a green star")  # prompts for the generator
EVAL_IMAGES = 200  # per split: enough for stable metrics, small enough for a one-minute demo


def run_demo(out: str | Path = "demo_out", model_dir: str | Path | None = None, n: int = 5000) -> Path:
    """Run the demo; returns the path of the markdown report."""
    started = time.time()
    out = out_folder(Path(out))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir) if model_dir else bundled_model_dir()
    model = load(model_dir)
    data = DataConfig(format="shapes", n=n, seed=0)
    print(f"model: {model_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)")

    test = load_split(data, "test")
    lines = ["# polymodal demo: the bundled models on Shapes World", "",
             f"Model: `{model_dir.name}`. Decoding: beam search, beam 3.", "", "## Sample captions (test split)", ""]
    print("\nsample test images, beam 3 n-best beside the references:")
    vqa = load(bundled_model_dir(BUNDLED_VQA))  # the page's other capability: questions about the image
    for rec in test[:SAMPLES]:
        nbest = model.caption_nbest([rec.image], strategy="beam", beam_size=3, num_return_sequences=3)[0]
        print(f"  {Path(rec.image).name}\n    model: {nbest[0]}   (n-best: {' | '.join(nbest[1:])})\n"
              f"    refs:  {rec.captions[0]} | {rec.captions[1]}")
        answer, p = vqa.answer_topk(rec.image, QUESTION, 1)[0][0]
        print(f"    asked {QUESTION!r}: {answer} (p={p:.2f})")
        lines += [f"![{rec.id}]({_beside(rec.image, out, 'images')})", "",
                  f"- **model**: {nbest[0]}", f"- n-best: {' / '.join(nbest[1:])}",
                  f"- references: {' / '.join(rec.captions[:3])}",
                  f"- asked the bundled VQA model \"{QUESTION}\": **{answer}** (p={p:.2f})", ""]

    lines += _search_section(out) + _assistant_section(test[2].image) + _drawing_section(out, model)
    lines += _speech_section(out, vqa, test[0].image)
    generation = GenerationConfig(strategy="beam", beam_size=3, max_len=model.cfg.decoder.max_len)
    truth = ObjectTruth.shapes(shapes_folder(data))  # are the named objects in the picture?
    all_metrics = {}
    for split in ("test", "heldout"):
        records = (test if split == "test" else load_split(data, split))[:EVAL_IMAGES]
        results, metrics = evaluate_captioner(model, records, generation, progress=False, objects=truth)
        all_metrics[split] = metrics
        write_json(out / f"results_{split}.json", [{"image_id": k, "caption": v} for k, v in results.items()])
        print(f"\n{split} split ({len(results)} images):\n{metrics_table(metrics)}")
    write_json(out / "metrics.json", all_metrics)
    lines += [f"## Metrics (beam 3, first {EVAL_IMAGES} images of each split)", "",
              "CHAIR-i: named objects that are not in the image; exact objects: captions that name exactly the "
              "scene's objects.", "",
              "| split | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | CHAIR-i | exact objects |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {m['bleu4']:.3f} | {m['meteor']:.3f} | {m['rouge_l']:.3f} | {m['cider']:.3f} | "
              f"{m['chair_i']:.1%} | {m['exact_objects']:.1%} |" for s, m in all_metrics.items()]

    lines += ["", "## Where the model looks", "", "One panel per generated word (attention over the image).", ""]
    for rec in test[:3]:
        folder = out / "heatmaps" / Path(rec.image).stem
        try:
            captions, _ = caption_heatmaps(model, rec.image, folder, strategy="beam", beam_size=3)
        except InputError as err:  # a model without attention (the seed LSTM): say so instead of drawing
            lines += [f"Not drawn: {err}", ""]
            break
        grid = (folder / "grid.png").relative_to(out).as_posix()
        lines += [f"**{captions[0]}**", "", f"![heatmaps]({grid})", ""]
    log = model_dir / "log.jsonl"
    if log.exists():
        plot_training_curves(log, out / "training_curves.png")
        lines += ["## Training curves", "", "![curves](training_curves.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"\nreport: {report.resolve()}\nheatmaps: {(out / 'heatmaps').resolve()}\n"
          f"metrics: {(out / 'metrics.json').resolve()}  ({time.time() - started:.0f} s)\n"
          f"the web page with every bundled model: polymodal serve   (then open http://127.0.0.1:8000/)")
    return report


def _search_section(out: Path, k: int = 3) -> list[str]:
    """The page's third capability: text search over the bundled index with the bundled dual encoder."""
    from ..eval.retrieval import RetrievalIndex

    encoder, index = load(bundled_model_dir(BUNDLED_DUAL_ENCODER)), RetrievalIndex.load(ASSETS / BUNDLED_INDEX)
    hits = index.search(encoder.embed_texts([SEARCH]), k=k)[0]
    print(f"\nsearched {len(index.items)} built-in scenes for {SEARCH!r}: "
          + ", ".join(f"{Path(path).name} ({score:.2f})" for path, score in hits))
    lines = ["## Text search (bundled dual encoder and index)", "",
             f"The {k} best of {len(index.items)} built-in scenes for \"{SEARCH}\", with cosine scores:", ""]
    return lines + [f"![{Path(path).stem}]({_beside(path, out, 'search')}) {score:.2f}" for path, score in hits] + [""]


def _assistant_section(image: str) -> list[str]:
    """One conversation with the bundled assistant: it counts, names colours, declines what it cannot see or do."""
    assistant, messages = load(bundled_model_dir(BUNDLED_ASSISTANT)), []
    lines = ["## A conversation (bundled assistant)", "", f"About {Path(image).name} (the third sample above); each "
             "question is asked after the conversation before it.", ""]
    print(f"\na conversation with the bundled assistant about {Path(image).name}:")
    for question in CONVERSATION:
        messages.append({"role": "user", "content": question})
        reply = assistant.chat_reply(image, messages)
        messages.append({"role": "assistant", "content": reply.text})
        print(f"  you> {question}\n  assistant: {reply.text}")
        lines.append(f"- *{question}* **{reply.text}**")
    return lines + [""]


def _drawing_section(out: Path, captioner: object, n: int = 4) -> list[str]:
    """Text -> image with the bundled generator, and the loop closed: the captioner describes what was drawn."""
    from ..eval.generation_stats import image_grid

    generator = load(bundled_model_dir(BUNDLED_GENERATOR))
    folder = out / "drawings"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["## Drawn from text (bundled generator), then captioned", "",
             f"{n} images per prompt (seed 0); under each row, the bundled captioner's caption of each image.", ""]
    print()
    for k, prompt in enumerate(DRAW):
        images = generator.generate_images(prompt, n=n, seed=0)
        image_grid([im.resize((128, 128), 0) for im in images], columns=n).save(folder / f"prompt_{k}.png")
        captions = captioner.caption(images, beam_size=3)  # type: ignore[attr-defined]
        print(f"drew {prompt!r} x{n}; captioned as: {' | '.join(captions)}")
        lines += [f"**\"{prompt}\"**", "", f"![{prompt}](drawings/prompt_{k}.png)", "",
                  "captions: " + " / ".join(captions), ""]
    return lines


def _speech_section(out: Path, vqa: object, image: str) -> list[str]:
    """A spoken question (espeak-ng) heard by the bundled recognizer, answered, and the answer spoken back."""
    from ..data.speech import INSTALL_HINT, espeak, espeak_available

    if not espeak_available():
        print(f"\nspoken question: skipped (espeak-ng not found; {INSTALL_HINT})")
        return ["## A spoken question", "", f"Skipped: espeak-ng was not found ({INSTALL_HINT}).", ""]
    folder = out / "speech"
    folder.mkdir(parents=True, exist_ok=True)
    asked = espeak(QUESTION, folder / "question.wav")
    heard = load(bundled_model_dir(BUNDLED_ASR)).transcribe([asked])[0]
    answer = vqa.answer_topk(image, heard, 1)[0][0][0]  # type: ignore[attr-defined]
    espeak(answer, folder / "answer.wav")
    print(f"\nspoken question {QUESTION!r} heard as {heard!r}; answer {answer!r} spoken to {folder / 'answer.wav'}")
    return ["## A spoken question (bundled speech recognizer, answer spoken by espeak-ng)", "",
            f"[question.wav](speech/question.wav) heard as \"{heard}\" about {Path(image).name}; "
            f"answer **{answer}**: [answer.wav](speech/answer.wav)", ""]


def _beside(image: str | Path, out: Path, folder: str) -> str:
    """Copy `image` into out/folder/ and return its link relative to the report (a POSIX path)."""
    target = out / folder / Path(image).name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    return target.relative_to(out).as_posix()


if __name__ == "__main__":
    print(json.dumps(str(run_demo())))
