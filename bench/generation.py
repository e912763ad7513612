"""Text -> image, graded GenEval-style by the project's own perception; writes the model family's results
(docs/results/generation.json, generation_tokens.json or generation_scenes.json, and its sample pictures) and
rewrites docs/generation.md (bench/generation_report.py) with the families side by side.

    OMP_NUM_THREADS=1 python bench/generation.py --model runs/text_to_image

Sections: the grader on real rendered scenes (against their ground truth); fully-correct rate per prompt group on
test and held-out scenes (and the same prompts graded on the real renderings: the grader's ceiling); caption
round trip (bundled captioner, CIDEr-D against the prompt); Fréchet distance on the bundled VQA model's CNN
features; diversity; nearest training images; sampling speed and accuracy against sampler steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from _report import write_section  # noqa: E402  (bench/, beside this file)
from generation_report import FAMILIES, FAMILY_OF, PICTURES, SPEED_FIGURES, speed_section, write_report  # noqa: E402

import polymodal  # noqa: E402
from polymodal.assets import ASSETS, BUNDLED_CAPTIONER, BUNDLED_VQA  # noqa: E402
from polymodal.data.scene_plan import scene_plan  # noqa: E402
from polymodal.data.shapes import HELDOUT_PAIRS, ShapesWorld  # noqa: E402
from polymodal.eval.caption_metrics import caption_metrics  # noqa: E402
from polymodal.eval.generation import GROUPS, ObjectParser, grade, match_scene, prompt_groups  # noqa: E402
from polymodal.eval.generation_stats import (  # noqa: E402
    frechet_distance,
    image_grid,
    nearest_distances,
    pairwise_diversity,
    to_unit_tensor,
)
from polymodal.eval.ood import pooled_image_features  # noqa: E402
from polymodal.models.image_generation import to_pil  # noqa: E402

SAMPLE_PROMPTS = ["a small red circle to the left of a large blue square", "a large green star",
                  "a yellow triangle above a white hexagon", "three shapes: a small cyan diamond, a large orange "
                  "circle and a small purple square", "a green triangle", "a large red square",
                  "a blue star to the left of a yellow hexagon", "there are four shapes"]


class Drawer:
    """Draws images for prompts in batches, each text with its own noise (seeded by its first appearance)."""

    def __init__(self, model, steps: int, guidance: float, seed: int = 0, batch: int = 32):
        self.model, self.steps, self.guidance, self.seed, self.batch = model, steps, guidance, seed, batch
        self.temperature: float | None = None  # image tokens: sampling temperature (None: the model's default)
        self.cache: dict[tuple, object] = {}

    def draw(self, texts: list[str], steps: int | None = None, seed: int | None = None,
             guidance: float | None = None) -> list:
        steps = steps or self.steps
        seed = self.seed if seed is None else seed
        guidance = self.guidance if guidance is None else guidance
        key = (steps, seed, guidance, self.temperature, getattr(self.model.cfg, "candidates", 1))
        todo = [t for t in dict.fromkeys(texts) if (t, *key) not in self.cache]
        size = self.model.cfg.image_size
        g = torch.Generator().manual_seed(seed)
        noise = {t: torch.randn(3, size, size, generator=g) for t in dict.fromkeys(texts)}
        for start in range(0, len(todo), self.batch):
            chunk = todo[start:start + self.batch]
            if getattr(self.model, "fixed_steps", False):  # tokens (codes or a plan): a chunk samples together
                with torch.inference_mode():
                    images = to_pil(self.model.sample_batch(chunk, seed + start, guidance, self.temperature))
            else:  # continuous: each text starts from its own noise
                images = to_pil(self.model.sample(chunk, torch.stack([noise[t] for t in chunk]), steps, guidance))
            for t, im in zip(chunk, images, strict=True):
                self.cache[(t, *key)] = im
        return [self.cache[(t, *key)] for t in texts]


def redrawer(model):
    """How a family's own drawing part redraws real scenes: an image tokenizer encodes and decodes the image, a
    planning generator's renderer draws the scene's true plan. Graded, the best that family's generator can be."""
    if model.architecture == "image_tokenizer":
        def redraw(scenes, images):
            with torch.inference_mode():
                x = to_unit_tensor(images, model.cfg.image_size) * 2 - 1
                return to_pil(torch.cat([model.decode(model.encode(b)) for b in x.split(64)]))
    else:
        def redraw(scenes, images):
            return to_pil(model.render([scene_plan(s, model.cfg.background_levels, model.cfg.grid) for s in scenes]))
    return redraw


def grader_accuracy(parser: ObjectParser, world: ShapesWorld, n: int, redraw=None) -> dict:
    """The grader on real test / heldout scenes against their ground truth; with `redraw` (see `redrawer`), on the
    scenes as a family's own drawing part redraws them."""
    out = {}
    for split in ("test", "heldout"):
        scenes = [world.scene(split, i) for i in range(n)]
        images = [world.image(split, i) for i in range(n)]
        if redraw is not None:
            images = redraw(scenes, images)
        parsed = parser.parse(images)
        hits = [match_scene(s, p) for s, p in zip(scenes, parsed, strict=True)]
        out[split] = {"images": n, "objects": sum(k for _, k in hits),
                      "object_exact": sum(h for h, _ in hits) / sum(k for _, k in hits),
                      "image_exact": sum(h == k == len(p) for (h, k), p in zip(hits, parsed, strict=True)) / n,
                      "count_exact": sum(len(p) == len(s.objects) for s, p in zip(scenes, parsed, strict=True)) / n}
    return out


def prompts_with_scenes(scenes, split: str, per_group: int) -> list[tuple]:
    """(prompt, index of the scene it was made from), at most `per_group` per group, in GROUPS order."""
    counts: Counter = Counter()
    out = []
    for i, scene in enumerate(scenes):
        for p in prompt_groups([scene], split):
            if counts[p.group] < per_group:
                counts[p.group] += 1
                out.append((p, i))
    return sorted(out, key=lambda pi: GROUPS.index(pi[0].group))


def group_rates(prompts, images, parser) -> dict[str, dict]:
    parsed = parser.parse(images)
    by = defaultdict(list)
    for p, objs in zip(prompts, parsed, strict=True):
        by[p.group].append(grade(p, objs))
    return {g: {"n": len(v), "correct": sum(v) / len(v)} for g, v in by.items()}


def heldout_rows(prompts, images, parser) -> dict[str, dict]:
    """Held-out compositions: single-object and relation prompts of the heldout split that name a held-out pair."""
    keep = [(p, im) for p, im in zip(prompts, images, strict=True) if p.group in ("single_object", "position")
            and any((o.colour, o.shape) in HELDOUT_PAIRS for o in p.objects)]
    return group_rates([p for p, _ in keep], [im for _, im in keep], parser)


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    torch.manual_seed(0)
    model = polymodal.load(args.model)
    if getattr(model, "fixed_steps", False):  # one step per image token: no steps to choose or sweep
        args.steps, args.curve = model.cfg.steps, []
    vqa = polymodal.load(ASSETS / BUNDLED_VQA)
    captioner = polymodal.load(ASSETS / BUNDLED_CAPTIONER)
    parser = ObjectParser(vqa)
    world = ShapesWorld(n=5000, seed=0, image_size=128)  # the scenes every other Shapes World figure uses
    drawer = Drawer(model, args.steps, args.guidance)
    res: dict = {"model": args.model, "architecture": model.architecture, "steps": args.steps, "guidance": args.guidance, "image_size": model.cfg.image_size,
                 "parameters": sum(p.numel() for p in model.parameters())}
    log = print
    res["grader_on_real"] = grader_accuracy(parser, world, args.real)
    log("grader", res["grader_on_real"])
    if args.candidates_sweep and hasattr(model.cfg, "candidates"):
        model.cfg.candidates = 1  # one plan per image while the guidance and temperature are chosen
    if args.guidance_sweep:  # choose the guidance scale on validation scenes, never on the test prompts
        val_prompts = [p for p, _ in prompts_with_scenes([world.scene("val", i) for i in range(500)], "val",
                                                         args.sweep_per_group) if p.group in ("single_object", "position")]
        sweep = {}
        for gs in args.guidance_sweep:
            sweep[f"{gs:g}"] = group_rates(val_prompts, drawer.draw([p.text for p in val_prompts], guidance=gs), parser)
        best = max(args.guidance_sweep, key=lambda gs: sum(r["correct"] for r in sweep[f"{gs:g}"].values()))
        drawer.guidance = res["guidance"] = args.guidance = best
        res["guidance_sweep_val"] = sweep
        log("guidance sweep (val)", sweep, "->", best)
        if args.temperature_sweep and getattr(model, "fixed_steps", False):  # then the temperature, at that guidance
            sweep = {}
            for temp in args.temperature_sweep:
                drawer.temperature = temp
                sweep[f"{temp:g}"] = group_rates(val_prompts, drawer.draw([p.text for p in val_prompts]), parser)
            drawer.temperature = res["temperature"] = max(
                args.temperature_sweep, key=lambda tt: sum(r["correct"] for r in sweep[f"{tt:g}"].values()))
            res["temperature_sweep_val"] = sweep
            log("temperature sweep (val)", sweep, "->", res["temperature"])
        if args.candidates_sweep and hasattr(model.cfg, "candidates"):  # planning: plans sampled per image
            sweep = {}
            for k in args.candidates_sweep:
                model.cfg.candidates = k
                sweep[str(k)] = group_rates(val_prompts, drawer.draw([p.text for p in val_prompts]), parser)
            model.cfg.candidates = res["candidates"] = max(
                args.candidates_sweep, key=lambda k: sum(r["correct"] for r in sweep[str(k)].values()))
            res["candidates_sweep_val"] = sweep
            log("candidates sweep (val)", sweep, "->", res["candidates"])

    groups, real_ceiling, heldout = {}, {}, {}
    for split in ("test", "heldout"):
        scenes = [world.scene(split, i) for i in range(500)]
        pairs = prompts_with_scenes(scenes, split, args.per_group)
        prompts = [p for p, _ in pairs]
        images = drawer.draw([p.text for p in prompts])
        groups[split] = group_rates(prompts, images, parser)
        real = [world.image(split, i) for _, i in pairs]  # the scene each prompt was made from
        real_ceiling[split] = group_rates(prompts, real, parser)
        if split == "heldout":
            heldout = heldout_rows(prompts, images, parser)
        log(split, groups[split])
        if split == "test":
            test_prompts, test_images, test_real = prompts, images, real
    res["groups"], res["groups_real_images"], res["heldout_compositions"] = groups, real_ceiling, heldout

    # caption round trip: the bundled captioner's caption of each image, CIDEr-D against the prompt
    rt = [(i, p) for i, p in enumerate(test_prompts) if p.group in ("single_object", "position", "count")]
    refs = {str(i): [p.text] for i, p in rt}
    gen_caps = captioner.caption([test_images[i] for i, _ in rt], beam_size=3)
    real_caps = captioner.caption([test_real[i] for i, _ in rt], beam_size=3)
    res["caption_round_trip"] = {
        "n": len(rt),
        "cider_generated": caption_metrics(dict(zip(refs, gen_caps, strict=True)), refs, True, "simple")["cider"],
        "cider_real": caption_metrics(dict(zip(refs, real_caps, strict=True)), refs, True, "simple")["cider"],
        "examples": [{"prompt": p.text, "caption_of_generated": c}
                     for (_, p), c in list(zip(rt, gen_caps, strict=True))[:: max(len(rt) // 6, 1)]]}
    log("round trip", {k: v for k, v in res["caption_round_trip"].items() if k != "examples"})

    # Fréchet distance on the bundled VQA model's CNN features
    test_real_all = [world.image("test", i) for i in range(500)]
    val_real = [world.image("val", i) for i in range(500)]
    f_test = pooled_image_features(vqa, test_real_all).double()
    res["frechet"] = {"generated_vs_test": frechet_distance(pooled_image_features(vqa, test_images).double(), f_test),
                      "real_val_vs_test": frechet_distance(pooled_image_features(vqa, val_real).double(), f_test),
                      "generated_n": len(test_images), "features": "bundled VQA small_cnn, mean-pooled regions"}
    log("frechet", res["frechet"])

    # diversity: 8 seeds of 8 prompts
    div_prompts = SAMPLE_PROMPTS[: args.diversity]
    seeds = [drawer.draw(div_prompts, seed=s) for s in range(8)]
    per_prompt = [[seeds[s][k] for s in range(8)] for k in range(len(div_prompts))]
    res["diversity"] = pairwise_diversity(per_prompt)
    real_groups = [[world.image("test", 8 * k + j) for j in range(8)] for k in range(len(div_prompts))]
    res["diversity"]["real_test_mean_pixel_difference"] = pairwise_diversity(real_groups)["mean_pixel_difference"]
    log("diversity", res["diversity"])

    # nearest training image (RMS pixel distance), generated vs real test images
    train_world = ShapesWorld(n=args.train_n, seed=0, image_size=128)
    n_train = len(train_world.splits["train"])
    pool = to_unit_tensor([train_world.image("train", i) for i in range(n_train)], 64)
    gen_nn = nearest_distances(test_images[:200], pool)
    real_nn = nearest_distances(test_real_all[:200], pool)
    res["nearest_training_image"] = {"train_images": n_train, "generated_median": float(gen_nn.median()),
                                     "real_test_median": float(real_nn.median()), "generated_min": float(gen_nn.min()),
                                     "real_test_min": float(real_nn.min()),
                                     "generated_below_real_min": float((gen_nn < real_nn.min()).float().mean())}
    log("nearest", res["nearest_training_image"])
    idx = int(gen_nn.argmin())  # the generated image closest to any training image, and that image
    nearest = int(((pool.flatten(1) - to_unit_tensor([test_images[idx]]).flatten(1)) ** 2).sum(1).argmin())
    nn_pair = [test_images[idx], to_pil(pool[nearest][None] * 2 - 1)[0]]

    # speed and accuracy against steps
    speed = {}
    for steps in sorted({args.steps, 10} if args.curve else {args.steps}):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model.generate_images("a small red circle to the left of a large blue square", n=16, seed=0,
                                  steps=steps, guidance=args.guidance)  # one batch of 16
            times.append(time.perf_counter() - t)
        speed[str(steps)] = {"seconds_16_images": statistics.median(times), "runs": times,
                             "steps_per_second": steps / statistics.median(times)}
    res["speed"] = speed
    curve = {}
    curve_prompts = [p for p in test_prompts if p.group in ("single_object", "position")]
    for steps in args.curve:
        imgs = drawer.draw([p.text for p in curve_prompts], steps=steps)
        curve[str(steps)] = group_rates(curve_prompts, imgs, parser)
    res["steps_curve"] = curve
    log("speed", speed, "curve", curve)

    sheet_prompts = SAMPLE_PROMPTS
    sheet = [seeds[s][k] for k in range(len(div_prompts)) for s in range(4)]
    suffix = PICTURES[FAMILY_OF[model.architecture]]  # one pair of pictures per family
    res["samples_png"], res["nearest_png"] = f"generation_samples{suffix}.png", f"generation_nearest{suffix}.png"
    image_grid([im.resize((96, 96), 0) for im in sheet], columns=8, pad=3).save(ROOT / "docs" / res["samples_png"])
    image_grid([im.resize((96, 96), 0) for im in nn_pair], columns=2, pad=3).save(ROOT / "docs" / res["nearest_png"])
    res["sample_prompts"] = sheet_prompts[: len(div_prompts)]
    res["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    res["bench_minutes"] = (time.time() - started) / 60
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/text_to_image")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--guidance-sweep", type=lambda s: [float(x) for x in s.split(",")], default=[],
                    help="guidance scales tried on val scenes; the best replaces --guidance")
    ap.add_argument("--temperature-sweep", type=lambda s: [float(x) for x in s.split(",")], default=[],
                    help="image-token models: sampling temperatures tried on val scenes after the guidance sweep")
    ap.add_argument("--candidates-sweep", type=lambda s: [int(x) for x in s.split(",")], default=[],
                    help="planning models: plans sampled per image (the likeliest drawn), tried on val scenes last")
    ap.add_argument("--sweep-per-group", type=int, default=50)
    ap.add_argument("--per-group", type=int, default=100)
    ap.add_argument("--real", type=int, default=500, help="real images per split for the grader's own accuracy")
    ap.add_argument("--curve", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20, 40])
    ap.add_argument("--diversity", type=int, default=8)
    ap.add_argument("--train-n", type=int, default=30000, help="Shapes World n the model was trained on")
    ap.add_argument("--training", default=None, help="JSON of the training run: command, steps, batch_size, "
                    "minutes, val_loss")
    ap.add_argument("--json", default=None, help="results file; default: the model family's in "
                    "bench/generation_report.py FAMILIES")
    ap.add_argument("--tokenizer-ceiling", default=None, help="image tokenizer folder of a token model's run, or a "
                    "planning model: grade real scenes redrawn by it (encode -> decode; the true plan drawn) and add "
                    "the result to the family's existing --json, nothing else")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.tokenizer_ceiling:
        drawer_model = polymodal.load(args.tokenizer_ceiling)
        family = "discrete" if drawer_model.architecture == "image_tokenizer" else FAMILY_OF[drawer_model.architecture]
        out = Path(args.json) if args.json else FAMILIES[family]
        res = json.loads(out.read_text(encoding="utf-8"))
        parser = ObjectParser(polymodal.load(ASSETS / BUNDLED_VQA))
        res["tokenizer_ceiling"] = grader_accuracy(parser, ShapesWorld(n=5000, seed=0, image_size=128), args.real,
                                                   redrawer(drawer_model))
        res["tokenizer_ceiling"]["command"] = "OMP_NUM_THREADS=1 python bench/generation.py " + " ".join(sys.argv[1:])
        out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        write_report()
        print(f"tokenizer ceiling {res['tokenizer_ceiling']} -> {out}")
        return
    res = run(args)
    res["training"] = json.loads(Path(args.training).read_text()) if args.training else {}
    res["command"] = "OMP_NUM_THREADS=1 python bench/generation.py " + " ".join(sys.argv[1:])
    family = FAMILY_OF[res["architecture"]]
    out = Path(args.json) if args.json else FAMILIES[family]
    out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    write_report()
    results = {f: json.loads(p.read_text(encoding="utf-8")) for f, p in FAMILIES.items() if p.is_file()}
    markdown, figures = speed_section(results)
    write_section("generation", markdown, figures, described=SPEED_FIGURES,
                  command="python bench/generation.py --model MODEL")
    print(f"wrote {out}, docs/generation.md and its section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
