"""Every `polymodal` command against every model kind the project saves and against folders that hold no model.

Each run must end with exit 0, or with exactly one `error: ...` line on stderr and exit 2; never a traceback.
The commands are read from the Typer app, so a new command fails here until it has a recipe below.
Runs happen in this process (typer's CliRunner isolation + `polymodal.cli.main`): a subprocess costs seconds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.text.tokenizer import SPECIALS, WordTokenizer

from .conftest import CAPTIONS, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = sorted({w for c in CAPTIONS for w in c.replace(":", "").split()} | {"what", "colour", "is", "the", "shape"})
ANSWERS = ["red", "blue", "circle"]
QUESTION = "what colour is the circle?"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ----------------------------------------------------------------------------- tiny models, one per saved kind
def _captioner() -> torch.nn.Module:
    return tiny_model()


def _refining() -> torch.nn.Module:
    from polymodal.models.refine import RefinerConfig, RefiningCaptioner

    first = tiny_model()
    return RefiningCaptioner.from_captioner(first, RefinerConfig(embed_dim=8, hidden_dim=16, attention_dim=8,
                                                                 draft_dim=8, dropout=0.0))


def _prefix_lm() -> torch.nn.Module:
    from polymodal.models.prefix_lm import PrefixConfig, PrefixLM

    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_layers=1, num_heads=4, dropout=0.0, max_len=12))
    return PrefixLM(cfg, WordTokenizer.build(CAPTIONS), PrefixConfig(pixel_shuffle=2))


def _dual_encoder() -> torch.nn.Module:
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
    from polymodal.nn.text_encoders import TextEncoderConfig

    cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, embed_dim=16,
                            text=TextEncoderConfig(name="transformer", width=16, layers=1, heads=2))
    return DualEncoder(cfg, WordTokenizer.build(CAPTIONS))


def _question():
    from polymodal.models.vqa import QuestionEncoderConfig

    return QuestionEncoderConfig(embed_dim=8, hidden_dim=16, max_len=12)


def _vqa() -> torch.nn.Module:
    from polymodal.models.vqa import VQAModel, VQAModelConfig
    from polymodal.nn.fusion.base import FusionConfig

    cfg = VQAModelConfig(encoder=EncoderConfig(name="small_cnn", width=8), question=_question(), image_size=32, dim=16,
                         fusion=FusionConfig(dim=16, hidden=16, heads=2))
    return VQAModel(cfg, WordTokenizer([*SPECIALS, *WORDS]), ANSWERS)


def _spoken_vqa() -> torch.nn.Module:
    from polymodal.models.asr import ASRConfig
    from polymodal.models.spoken_vqa import SpokenVQAConfig, SpokenVQAModel
    from polymodal.nn.fusion.base import FusionConfig

    cfg = SpokenVQAConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, dim=16,
                          fusion=FusionConfig(dim=16, hidden=16, heads=2), question=_question(),
                          speech=ASRConfig(n_mels=40, channels=4, dim=8, hidden=8, layers=1))
    return SpokenVQAModel(cfg, None, ANSWERS)


def _chat() -> torch.nn.Module:
    from polymodal.data.dialogue import ASSISTANT, USER
    from polymodal.models.chat import Assistant, ChatModelConfig

    cfg = ChatModelConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, dim=16, heads=2,
                          grounding_layers=1, embed_dim=8, hidden_dim=16, attention_dim=8, context=_question())
    return Assistant(cfg, WordTokenizer([*SPECIALS, USER, ASSISTANT, *WORDS]))


def _assistant() -> torch.nn.Module:
    from polymodal.data.dialogue import ASSISTANT, USER
    from polymodal.models.assistant import AssistantConfig, InstructionAssistant
    from polymodal.models.prefix_lm import PrefixConfig

    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_layers=1, num_heads=4, dropout=0.0, max_positions=32))
    return InstructionAssistant(cfg, WordTokenizer([*SPECIALS, USER, ASSISTANT, *WORDS]), PrefixConfig(pixel_shuffle=2),
                                AssistantConfig(max_reply_len=8))


def _media():
    from polymodal.nn.media import MediaConfig

    return MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), image_size=32, frames=4, grid=2, dim=16,
                       audio_width=4, audio_tokens=4, heads=2)


def _video_captioner() -> torch.nn.Module:
    from polymodal.models.video_captioner import VideoCaptioner, VideoCaptionerConfig

    cfg = VideoCaptionerConfig(media=_media(), decoder=DecoderConfig(embed_dim=8, hidden_dim=16, attention_dim=8,
                                                                     dropout=0.0, max_len=12))
    return VideoCaptioner(cfg, WordTokenizer.build(CAPTIONS))


def _video_qa() -> torch.nn.Module:
    from polymodal.models.video_qa import VideoQA, VideoQAConfig
    from polymodal.nn.fusion.base import FusionConfig

    cfg = VideoQAConfig(media=_media(), fusion=FusionConfig(name="cross_attention", dim=16, hidden=16, heads=2,
                                                            query="text"))
    return VideoQA(cfg, WordTokenizer([*SPECIALS, *WORDS]), ANSWERS)


def _asr() -> torch.nn.Module:
    from polymodal.models.asr import ASRConfig, SpeechRecognizer

    return SpeechRecognizer(ASRConfig(n_mels=40, channels=4, dim=8, hidden=8, layers=1), ["red", "circle"])


def _text_to_image() -> torch.nn.Module:
    from polymodal.models.text_to_image import TextToImage, TextToImageConfig
    from polymodal.nn.text_encoders import TextEncoderConfig
    from polymodal.nn.unet import UNetConfig

    cfg = TextToImageConfig(image_size=16, unet=UNetConfig(channels=(8, 16), attention=(False, True), heads=2),
                            text=TextEncoderConfig(width=16, layers=1, heads=2), steps=2)
    return TextToImage(cfg, WordTokenizer.build(CAPTIONS))


def _image_tokenizer() -> torch.nn.Module:
    from polymodal.models.image_tokenizer import ImageTokenizer, ImageTokenizerConfig

    return ImageTokenizer(ImageTokenizerConfig(image_size=16, patch=2, channels=(8, 8), levels=(3, 3)))


def _token_image_generator() -> torch.nn.Module:
    from polymodal.models.image_tokenizer import ImageTokenizerConfig
    from polymodal.models.token_image_generator import TokenImageConfig, TokenImageGenerator

    cfg = TokenImageConfig(image=ImageTokenizerConfig(image_size=16, patch=2, channels=(8, 8), levels=(3, 3)),
                           width=16, layers=1, heads=2)
    return TokenImageGenerator(cfg, WordTokenizer.build(CAPTIONS))


def _scene_image_generator() -> torch.nn.Module:
    from polymodal.data.scene_plan import plan_tokens
    from polymodal.models.scene_image_generator import SceneImageConfig, SceneImageGenerator
    from polymodal.nn.sprites import SpriteConfig

    cfg = SceneImageConfig(image_size=16, width=16, layers=1, heads=2, grid=8, max_objects=2,
                           renderer=SpriteConfig(dim=8, channels=(8, 8)), background_levels=[40.0])
    return SceneImageGenerator(cfg, WordTokenizer([*WordTokenizer.build(CAPTIONS).words, *plan_tokens(8, 1)]))


KINDS: dict[str, Callable[[], torch.nn.Module]] = {
    "asr": _asr, "captioner": _captioner, "refining_captioner": _refining, "prefix_lm": _prefix_lm,
    "dual_encoder": _dual_encoder, "vqa": _vqa, "spoken_vqa": _spoken_vqa, "chat": _chat, "assistant": _assistant,
    "video_captioner": _video_captioner,
    "video_qa": _video_qa, "text_to_image": _text_to_image, "image_tokenizer": _image_tokenizer,
    "token_image_generator": _token_image_generator, "scene_image_generator": _scene_image_generator,
}
NOT_MODELS = ("empty_dir", "junk_dir", "junk_file")  # no model: an empty folder, one with a random file, that file
CAPTIONERS = ("captioner", "refining_captioner", "prefix_lm")
FITS = {**dict.fromkeys(CAPTIONERS, "polymodal caption"), "dual_encoder": "polymodal index", "vqa": "polymodal vqa",
        "chat": "polymodal chat", "assistant": "polymodal chat", "video_captioner": "polymodal describe", "video_qa": "polymodal videoqa",
        "asr": "polymodal transcribe", "text_to_image": "polymodal generate", "spoken_vqa": "polymodal vqa",
        "token_image_generator": "polymodal generate", "scene_image_generator": "polymodal generate",
        "image_tokenizer": "polymodal train"}


def test_every_saved_kind_is_built_here():
    from polymodal.registry import MODELS

    assert sorted(KINDS) == sorted(FITS) == MODELS.names(), "a new saved architecture: add it to KINDS and FITS"


# ----------------------------------------------------------------------------- inputs shared by all runs
@dataclass
class Inputs:
    models: dict[str, Path]   # kind -> model folder
    image: Path
    images: Path              # a folder of images
    video: Path
    world: Path               # a tiny Shapes World on disk
    index: Path               # an image index built by the dual encoder
    train_config: Path
    out: Path                 # a fresh output folder per run


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Inputs:
    from polymodal.data.audio import tone
    from polymodal.data.shapes import write_shapes_world
    from polymodal.data.video import write_video
    from polymodal.eval.retrieval import build_image_index

    root = tmp_path_factory.mktemp("matrix")
    models = {}
    for kind, build in KINDS.items():
        torch.manual_seed(0)
        models[kind] = build().eval().save_pretrained(root / kind)
    world = write_shapes_world(root / "world", n=40, image_size=32, progress=False)
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    frames[8:, :, :, 2] = 200
    video = write_video(root / "clip.mp4", frames, fps=8, audio=tone(440.0, 2.0).numpy(), sample_rate=16000)
    from polymodal.api import load

    dual = load(models["dual_encoder"])
    index, _ = build_image_index(dual, world / "images" / "test", 8, progress=False, model_dir=models["dual_encoder"])
    index.save(root / "index")
    config = root / "train.yaml"
    config.write_text(json.dumps({
        "task": "captioning", "model": {"image_size": 32, "encoder": {"name": "small_cnn", "width": 4},
                                        "decoder": {"embed_dim": 8, "hidden_dim": 16, "attention_dim": 8}},
        "data": {"format": "coco", "path": str(world / "captions.json")},
        "train": {"out_dir": str(root / "run"), "steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1,
                  "checkpoint_every": 2, "warmup_steps": 1}}))
    return Inputs(models, world / "images" / "test" / sorted(p.name for p in (world / "images" / "test").iterdir())[0],
                  world / "images" / "test", video, world, root / "index", config, root / "out")


# ----------------------------------------------------------------------------- one recipe per command
Args = Callable[[Path, Inputs], list[str]]


@dataclass(frozen=True)
class Recipe:
    """How to run one command on one path under test, and for which paths it must succeed (exit 0).

    A command that takes a model runs on every model kind and every NOT_MODELS path; one that takes none
    (a config, an output folder) runs on "valid" (a path made for it) and the NOT_MODELS paths. Every other
    run must stop with one `error:` line that names the path.
    """

    args: Args                  # (the path under test, inputs) -> the arguments after the command name
    ok: tuple[str, ...]         # the targets that must succeed
    takes_model: bool = True
    stdin: str = ""


def _s(*parts: object) -> list[str]:
    return [str(p) for p in parts]


RECIPES: dict[str, Recipe] = {
    "caption": Recipe(lambda m, i: _s(m, i.image, "--beam", 1), CAPTIONERS),
    "evaluate": Recipe(lambda m, i: _s(m, "--format", "shapes", "--data", i.world, "--beam", 1, "--out", i.out,
                                       "--quiet"), CAPTIONERS),
    "vqa": Recipe(lambda m, i: _s(m, i.image, QUESTION, "--top"), ("vqa",)),
    "chat": Recipe(lambda m, i: _s(m, i.image), ("chat", "assistant"), stdin=f"{QUESTION}\nquit\n"),
    "describe": Recipe(lambda m, i: _s(i.video, "--model", m, "-k", 2, "--beam", 1), ("video_captioner",)),
    "videoqa": Recipe(lambda m, i: _s(m, i.video, "what shape is heard off screen?"), ("video_qa",)),
    "keyframes": Recipe(lambda m, i: _s(i.video, "-k", 2, "--model", m, "--out", i.out), ("video_captioner",)),
    "index": Recipe(lambda m, i: _s(m, i.images, "--out", i.out, "--quiet"), ("dual_encoder",)),
    "retrieve": Recipe(lambda m, i: _s(i.index, "a red circle", "--model", m, "-k", 2), ("dual_encoder",)),
    "zeroshot": Recipe(lambda m, i: _s(m, "--data", i.world), ("dual_encoder",)),
    "retrieval-eval": Recipe(lambda m, i: _s(m, "--data", i.world / "captions.json", "--format", "coco"),
                             ("dual_encoder",)),
    "generate": Recipe(lambda m, i: _s(m, "a red circle", "--n", 2, "--out", i.out, "--quiet"),
                       ("text_to_image", "token_image_generator", "scene_image_generator")),  # default steps
    "transcribe": Recipe(lambda m, i: _s(m, i.video, "--beam", 2), ("asr",)),  # the clip's sound track
    "explain": Recipe(lambda m, i: _s(m, i.image, "--text", "a red circle", "--grid", 2, "--out", i.out),
                      (*CAPTIONERS, "dual_encoder")),  # a (video) VQA model needs --question: one error line
    # an output file: a new path is written, an existing file replaced, a folder refused
    "speak": Recipe(lambda p, i: _s("a red circle", "--out", p), ("valid", "junk_file") if shutil.which("espeak-ng")
                    else (), takes_model=False),
    "export": Recipe(lambda m, i: _s(m, "--onnx", i.out), ("captioner",)),
    # uvicorn.run is stubbed below: `serve` checks its models and builds the app, then returns instead of serving
    "serve": Recipe(lambda m, i: _s(m, "--port", 0), (*CAPTIONERS, "dual_encoder", "vqa", "chat", "assistant", "asr")),
    "models": Recipe(lambda m, i: _s(m), tuple(KINDS)),
    "train": Recipe(lambda p, i: _s(p, "--quiet"), ("valid",), takes_model=False),
    "ablate": Recipe(lambda p, i: _s("fusion", "--config", p, "--seeds", 1, "--steps", 1, "--variants", "film",
                                     "--out", i.out / "fusion.md", "--quiet", "data.n=40", "data.render_size=32",
                                     "model.image_size=32", "pretrain.steps=1", "train.batch_size=4"),
                     ("valid",), takes_model=False),
    "demo": Recipe(lambda p, i: _s("--out", p, "--n", 30), ("valid", "empty_dir", "junk_dir"), takes_model=False),
    "data shapes": Recipe(lambda p, i: _s("--out", p, "--n", 6, "--size", 16), ("valid", "empty_dir"),
                          takes_model=False),
    "data outside": Recipe(lambda p, i: _s("--out", p, "--n", 10, "--size", 16, "--quiet"), ("valid", "empty_dir"),
                           takes_model=False),
    "data shapes-video": Recipe(lambda p, i: _s("--out", p, "--n", 3, "--size", 16, "--quiet"),
                                ("valid", "empty_dir", "junk_dir"), takes_model=False),
    # without espeak-ng every run must stop with one error line naming the output folder
    "data shapes-speech": Recipe(lambda p, i: _s("--out", p, "--n", 3, "--quiet"),
                                 ("valid", "empty_dir") if shutil.which("espeak-ng") else (), takes_model=False),
}


def _target_path(command: str, target: str, i: Inputs, tmp: Path) -> Path:
    """The path under test: a saved model, a fresh non-model path, or the valid input of a command without a model."""
    if target in i.models:
        return i.models[target]
    if target == "valid":
        return {"train": i.train_config, "ablate": CONFIGS / "vqa.yaml"}.get(command, tmp / "new")
    (tmp / "empty_dir").mkdir()
    (tmp / "junk_dir").mkdir()
    (tmp / "junk_dir" / "junk_file").write_bytes(np.random.default_rng(0).bytes(300))
    return {"empty_dir": tmp / "empty_dir", "junk_dir": tmp / "junk_dir",
            "junk_file": tmp / "junk_dir" / "junk_file"}[target]


def cli_commands() -> list[str]:
    """Every command of the Typer app, groups included ("data shapes"), read from the app itself."""
    from polymodal.cli import app

    def walk(typer_app, prefix: str) -> list[str]:
        names = [prefix + (c.name or c.callback.__name__.replace("_", "-")) for c in typer_app.registered_commands]
        for group in typer_app.registered_groups:
            names += walk(group.typer_instance, f"{prefix}{group.name} ")
        return names

    return sorted(walk(app, ""))


def matrix() -> list[tuple[str, str]]:
    cases = []
    for command in cli_commands():
        recipe = RECIPES.get(command)
        targets = [*KINDS, *NOT_MODELS] if recipe is None or recipe.takes_model else ["valid", *NOT_MODELS]
        cases += [(command, t) for t in targets]
    return cases


# ----------------------------------------------------------------------------- the run
def run_cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """`polymodal ARGV` in this process, as `main()` runs it: exit status, stdout, stderr."""
    from typer.testing import CliRunner

    from polymodal.cli import main

    runner, old_argv = CliRunner(), sys.argv
    with runner.isolation(input=stdin) as (out, err, _):
        sys.argv = ["polymodal", *argv]
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.argv = old_argv
            sys.stdout.flush()
            sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def quick(monkeypatch):
    """`serve` returns instead of serving; METEOR gives 0 without its ~10 s Java start (tests/test_metrics.py)."""
    import contextlib

    import uvicorn

    class NoMeteor:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(res)

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr("polymodal.eval.caption_metrics.meteor_scorer", lambda: contextlib.nullcontext(NoMeteor()))


@pytest.mark.parametrize("command,target", matrix())
def test_command_ends_cleanly(command, target, inputs, tmp_path, quick):
    recipe = RECIPES.get(command)
    assert recipe is not None, f"`polymodal {command}` is new: add its recipe to RECIPES in {__file__}"
    i = dataclasses.replace(inputs, out=tmp_path / "out")
    path = _target_path(command, target, i, tmp_path)
    argv = [*command.split(), *recipe.args(path, i)]
    shown = f"polymodal {' '.join(argv)}"
    try:
        code, out, err = run_cli(argv, recipe.stdin)
    except Exception as exc:  # noqa: BLE001 - anything main() lets through is a traceback for the user
        pytest.fail(f"{shown}: raised {type(exc).__name__}: {exc}")
    assert "Traceback" not in out + err, f"{shown}:\n{err}"
    if target in recipe.ok:
        assert code == 0, f"{shown}: exit {code}\n{err}"
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"{shown}: exit {code}\n{err}"
    assert path.name in lines[0], f"{shown}: the error does not name {path}: {lines[0]}"
    if target in KINDS:  # a model of another kind: the error says which command takes it
        assert f"`{FITS[target]} " in lines[0], f"{shown}: the error does not point at {FITS[target]}: {lines[0]}"
