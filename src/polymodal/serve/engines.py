"""What the server can do with the models it loaded: which model serves which endpoint, and the work.

An endpoint is served by whichever loaded model has the method it needs (duck typing, no
architecture names): captioners have `caption_nbest`, VQA models `answer`, chat assistants `chat`,
dual encoders `embed_texts` (they embed the queries of a `--index`).
Captioning runs through the dynamic batcher as (preprocessed image tensor, decoding settings);
VQA and chat are single calls in the same model thread.

Example:
    >>> from polymodal.assets import bundled_model_dir
    >>> models = ModelSet(load_models([bundled_model_dir()]))  # model folders, e.g. "runs/attention_lstm"
    >>> models.pick("caption").name  # named after its folder
    'shapes_prefix_lm'
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.caption_controls import CaptionControls, with_phrase_words
from ..data.images import load_image
from ..errors import ConfigError, DataError, InputError
from ..eval.grounding import locate_objects, vocabulary_for
from ..eval.hallucination import ObjectVocabulary
from ..eval.viz import (  # imported with the server, so the first heatmap request is not slow
    attention_overlays,
    explanation_overlay,
)
from ..generate import BeamBatch, GenerationConfig, Hypothesis
from ..models.caption_budget import longest_within, says_less
from ..models.word_controls import control_ids, word_budget
from .schemas import CaptionOptions
from .uploads import RequestError

# endpoint -> the method a model needs to serve it
TASK_METHODS = {"caption": "caption_nbest", "vqa": "answer", "chat": "chat", "retrieve": "embed_texts",
                "generate": "generate_images",
                "transcribe": "transcribe"}
HEATMAP_SIDE = 224  # overlays are drawn on a 224 px square: sharp on the page, ~30 KB of PNG per word


@dataclass
class LoadedModel:
    """A served model under its name; `tasks` are the endpoints it can serve."""

    name: str
    model: Any
    attention: bool | None = None  # does generate() return attention maps? probed at startup
    objects: ObjectVocabulary | None = None  # reads the object phrases of its captions (set with attention)

    @property
    def tasks(self) -> list[str]:
        return [task for task, method in TASK_METHODS.items() if callable(getattr(self.model, method, None))]

    @property
    def batched(self) -> bool:
        """Whether captions can run as one `generate` over a stacked batch (else `caption_nbest`)."""
        return all(callable(getattr(self.model, m, None)) for m in ("generate", "preprocess")) and \
            hasattr(self.model, "tokenizer")

    def info(self) -> dict[str, Any]:
        cfg = getattr(self.model, "cfg", None)
        params = sum(p.numel() for p in self.model.parameters()) if hasattr(self.model, "parameters") else 0
        return {"name": self.name, "architecture": str(getattr(self.model, "architecture", type(self.model).__name__)),
                "tasks": self.tasks, "image_size": getattr(cfg, "image_size", None), "parameters": params,
                "attention": bool(self.attention) if "caption" in self.tasks else False,
                "controls": list(getattr(self.model, "trained_controls", ()))}  # the page enables what it can take


class ModelSet:
    """The loaded models by name; `pick(task, name)` finds the one that serves an endpoint."""

    def __init__(self, models: dict[str, Any]):
        self.entries = {name: LoadedModel(name, model) for name, model in models.items()}
        for entry in self.entries.values():
            if "caption" in entry.tasks and entry.batched:
                entry.attention = _probe_attention(entry.model)
                entry.objects = vocabulary_for(getattr(entry.model.tokenizer, "words", [])) if entry.attention else None

    def pick(self, task: str, name: str | None = None) -> LoadedModel:
        """The named model (which must serve `task`), or the first loaded one that does; else 404."""
        if name:
            entry = self.entries.get(name)
            if entry is None:
                raise RequestError(f"no model named {name!r}; loaded: {sorted(self.entries)} (GET /v1/models)", 404)
            if task not in entry.tasks:
                raise RequestError(f"model {name!r} cannot do {task} (it does {entry.tasks or 'nothing'})", 400)
            return entry
        for entry in self.entries.values():
            if task in entry.tasks:
                return entry
        raise RequestError(no_model_message(task), 404)


def no_model_message(task: str) -> str:
    what = {"caption": "a captioning model", "vqa": "a VQA model", "chat": "a chat model",
            "transcribe": "a speech recognizer"}.get(task, task)
    example = "`polymodal serve` (the bundled models)" if task == "transcribe" else \
        "`polymodal serve CAPTIONER_DIR VQA_OR_CHAT_DIR`"
    return f"no loaded model supports {task}; start the server with {what} too, e.g. {example}"


def load_models(dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Load model directories with `polymodal.load`, named after their folders (made unique)."""
    from ..api import load

    models: dict[str, Any] = {}
    for folder in dirs:
        path = Path(folder)
        base = path.name if path.name not in ("model", "") else path.parent.name or "model"
        name, n = base, 1
        while name in models:
            n += 1
            name = f"{base}-{n}"
        models[name] = load(path).eval()
    return models


def _probe_attention(model: Any) -> bool:
    """Whether generate() returns attention maps: one tiny greedy run on a blank image at startup."""
    size = int(getattr(getattr(model, "cfg", None), "image_size", 32))
    try:
        with torch.inference_mode():
            hyps = model.generate(torch.zeros(1, 3, size, size, device=getattr(model, "device", "cpu")),
                                  GenerationConfig(strategy="greedy", max_len=2, return_attention=True))
        return hyps[0][0].attention is not None
    except Exception:  # noqa: BLE001 - a model that cannot be probed is served without heatmaps
        return False


# ----------------------------------------------------------------------------- captioning
def generation_config(entry: LoadedModel, opts: CaptionOptions) -> GenerationConfig:
    cfg = getattr(entry.model, "cfg", None)
    default_len = getattr(getattr(cfg, "decoder", None), "max_len", 24)
    try:
        forced = with_phrase_words(opts.force_words or (), opts.focus_phrase, opts.strategy, opts.beam_size)
        return GenerationConfig(strategy=opts.strategy, beam_size=opts.beam_size if opts.strategy == "beam" else 1,
                                num_return_sequences=opts.nbest, max_len=opts.max_len or default_len,
                                seed=opts.seed, return_attention=opts.heatmaps and bool(entry.attention),
                                **word_controls(entry, opts.banned_words, forced, opts.omit_words),
                                **word_budget(getattr(entry.model, "tokenizer", None), opts.max_new_words))
    except (ConfigError, InputError) as err:
        raise RequestError(f"max_new_words: {err}" if isinstance(err, InputError) else str(err), 422) from None


def caption_prompt(entry: LoadedModel, opts: CaptionOptions) -> tuple[int, ...]:
    """The control prompt of a request's length / form / focus (empty: none); 422 for bad values or a control
    the model was not trained with."""
    try:
        controls = CaptionControls(opts.length, opts.form, opts.focus_point, opts.focus_box, opts.focus_phrase)
        if not controls.kinds:
            return ()
        if not callable(getattr(entry.model, "control_prompt", None)):
            raise InputError(f"model {entry.name!r} takes no {controls.kinds[0]} control")
        return tuple(entry.model.control_prompt(controls))
    except InputError as err:
        raise RequestError(str(err), 422) from None


def word_controls(entry: LoadedModel, banned: Sequence[str], forced: Sequence[str],
                  omitted: Sequence[str] = ()) -> dict[str, tuple]:
    """GenerationConfig's banned_ids / force_ids / omit_ids of a request's `banned_words` / `force_words` /
    `omit_words`; 422 when the model cannot take them (no tokenizer, an unknown word, a word forced and banned)."""
    given = [name for name, words in (("banned_words", banned), ("force_words", forced), ("omit_words", omitted))
             if words]
    if not given:
        return {}
    field = "/".join(given)
    tokenizer = getattr(entry.model, "tokenizer", None)
    if tokenizer is None:
        raise RequestError(f"{field}: model {entry.name!r} cannot take word controls (it has no tokenizer)", 422)
    try:
        return control_ids(tokenizer, banned, forced, omitted)
    except InputError as err:
        raise RequestError(f"{field}: {err}", 422) from None


def caption_key(entry: LoadedModel, generation: GenerationConfig, prompt: tuple[int, ...] = ()) -> Hashable:
    """Requests batch together only with the same model, the same decoding settings and the same control prompt."""
    return entry.name, tuple(sorted(vars(generation).items())), prompt


def _prompts(prompt: tuple[int, ...], rows: int) -> dict[str, Any]:
    """generate / init_state's `prompts` for a batch that shares one control prompt (nothing without one)."""
    return {"prompts": [list(prompt)] * rows} if prompt else {}


def prepare_caption(entry: LoadedModel, image: Image.Image) -> Any:
    """What one caption request contributes to a batch: a normalised (3, S, S) tensor, or the image."""
    return entry.model.preprocess([image])[0].cpu() if entry.batched else image


def run_caption_batch(models: ModelSet, key: Hashable, items: list[Any]) -> list[dict[str, Any]]:
    """Caption a batch in the model thread; one {"captions", "words", "attention"} per item."""
    name, settings, prompt = key  # type: ignore[misc]
    entry, generation = models.entries[name], GenerationConfig(**dict(settings))
    model = entry.model
    if not entry.batched:  # a captioner without generate/preprocess: still one call for the batch
        texts = model.caption_nbest(items, **vars(generation))
        return [{"captions": [(t, None) for t in per], "words": per[0].split(), "attention": None} for per in texts]
    device = getattr(model, "device", torch.device("cpu"))
    if says_less(model, generation, prompt):
        hyps = longest_within(model, torch.stack(items).to(device), generation)
    else:
        hyps = model.generate(torch.stack(items).to(device), generation, **_prompts(prompt, len(items)))
    return [caption_result(model.tokenizer, per_image) for per_image in hyps]


def caption_result(tokenizer: Any, hyps: list[Hypothesis]) -> dict[str, Any]:
    """One image's hypotheses (best first) -> {"captions": [(text, score)], "words", "attention"}."""
    best = hyps[0]
    return {"captions": [(tokenizer.decode(h.tokens), h.score) for h in hyps],
            "words": [tokenizer.decode([t]) for t in best.tokens],
            "attention": best.attention.float().cpu() if best.attention is not None else None}


class CaptionSession:
    """Continuous batching of caption requests with one model and decoding settings (`batching.Session`):
    images join the model's running beam search (`beam_batch`) between steps and leave when done."""

    def __init__(self, model: Any, beams: BeamBatch, prompt: tuple[int, ...] = ()):
        self.model, self.beams, self.prompt = model, beams, prompt

    def __len__(self) -> int:
        return len(self.beams)

    @torch.inference_mode()
    def add(self, items: list[torch.Tensor], keys: list[Hashable]) -> None:
        device = getattr(self.model, "device", torch.device("cpu"))
        self.beams.add(self.model.init_state(torch.stack(items).to(device), **_prompts(self.prompt, len(items))), keys)

    @torch.inference_mode()
    def advance(self) -> list[tuple[Hashable, dict[str, Any]]]:
        return [(key, caption_result(self.model.tokenizer, hyps)) for key, hyps in self.beams.advance()]


def open_caption_session(models: ModelSet, key: Hashable) -> CaptionSession | None:
    """A continuous batch for these caption settings, or None (not beam search, or a model whose
    decoding states cannot join a running batch): those run as whole batches."""
    name, settings, prompt = key  # type: ignore[misc]
    entry, generation = models.entries[name], GenerationConfig(**dict(settings))
    beam_batch = getattr(entry.model, "beam_batch", None)
    if generation.strategy != "beam" or not entry.batched or not callable(beam_batch) or \
            says_less(entry.model, generation, prompt):
        return None
    beams = beam_batch(generation)
    return CaptionSession(entry.model, beams, prompt) if beams is not None else None


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def object_markers(entry: LoadedModel, words: list[str], attention: torch.Tensor | None) -> list[dict[str, Any]] | None:
    """Where the model found each object its caption names (eval/grounding.py); None without attention."""
    if attention is None or entry.objects is None:
        return None
    return locate_objects(words, attention, entry.objects)


def render_heatmaps(image: Image.Image, attention: torch.Tensor) -> tuple[str, list[str]]:
    """(the centre square as PNG, one overlay PNG per word), both HEATMAP_SIDE px, base64."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    # The model saw the centre square (data.images.image_to_uint8); draw on that, downscaled once.
    square = image.crop((left, top, left + side, top + side)).resize((HEATMAP_SIDE, HEATMAP_SIDE),
                                                                      Image.Resampling.BICUBIC)
    return png_base64(square), [png_base64(o) for o in attention_overlays(square, attention)]


# ----------------------------------------------------------------------------- retrieval
class SearchIndex:
    """A retrieval index and the model that embeds its queries: `search(text or image, k)`.

    With an `encoder` (a dual encoder: `embed_texts`, `embed_images`), queries are embedded and the
    index (`polymodal.eval.retrieval.RetrievalIndex`: `items`, `kind`, `search(embeddings, k)`) is
    searched with them. Without one, the index is asked directly: `index.search(query, k=k)`
    returning (item, score) pairs; tests and custom indexes plug in that way.
    """

    def __init__(self, index: Any, encoder: Any = None, source: str = ""):
        self.index, self.encoder, self.source = index, encoder, source
        self.items = [str(p) for p in (getattr(index, "items", None) or getattr(index, "paths", None) or [])]
        self.kind = str(getattr(index, "kind", "image"))
        self.names = public_names(self.items) if self.kind == "image" else self.items

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "size": len(self.items), "kind": self.kind}

    def search(self, query: str | Image.Image, k: int) -> list[tuple[int, str, float]]:
        """The k best items: (position in the index, item (image name or caption), score).

        Images are named by their path under the folder all indexed images share, never by their
        full server-side path (which would tell clients how the server's disk is laid out).
        """
        if self.encoder is None:
            hits = self.index.search(query, k=k)
        else:
            text = isinstance(query, str)
            embed = self.encoder.embed_texts if text else self.encoder.embed_images
            hits = self.index.search(embed([query]), k=k)[0]
        position = {item: i for i, item in enumerate(self.items)}
        out = []
        for item, score in hits[:k]:
            i = position.get(str(item), -1)
            out.append((i, self.names[i] if i >= 0 else Path(str(item)).name, float(score)))
        return out

    def image(self, idx: int) -> Image.Image:
        """Image item `idx`, decoded safely; 404 for an index of captions, an unknown item or a vanished file."""
        if self.kind != "image":
            raise RequestError(f"this index holds {self.kind}s, not images", 404)
        if not 0 <= idx < len(self.items):
            raise RequestError(f"no index item {idx}; the index has {len(self.items)} items", 404)
        try:
            return load_image(self.items[idx], name=self.names[idx])  # errors name it as clients know it
        except DataError as err:
            raise RequestError(f"{err}".split(";")[0] + "; the index is out of date: rebuild it with "
                               "`polymodal index`", 404) from None

    def thumbnail(self, idx: int, side: int = 256) -> bytes:
        """A JPEG thumbnail of image item `idx`, decoded safely and without metadata."""
        image = self.image(idx)
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


def explanation_png(image: Image.Image, regions: torch.Tensor) -> str:
    """Base64 PNG of `explanation_overlay` (HEATMAP_SIDE px): the image with an explanation's cells in heat colours."""
    return png_base64(explanation_overlay(image, regions, HEATMAP_SIDE))


def public_names(paths: list[str]) -> list[str]:
    """Paths relative to the deepest folder they all share: /srv/photos/a/1.jpg -> a/1.jpg.

    Example:
        >>> public_names(["/srv/photos/a/1.jpg", "/srv/photos/b/2.jpg"])
        ['a/1.jpg', 'b/2.jpg']
    """
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def open_index(path: str | Path, models: ModelSet) -> SearchIndex:
    """Load an index written by `polymodal index`, with the model that built it for the queries.

    A loaded model with `embed_texts` whose weights match the index is used; otherwise the model
    directory recorded in the index is loaded.
    """
    from ..eval import retrieval

    index = retrieval.RetrievalIndex.load(path)
    encoders = [e.model for e in models.entries.values() if callable(getattr(e.model, "embed_texts", None))]
    encoder = next((m for m in encoders if retrieval.model_fingerprint(m) == index.fingerprint), None)
    if encoder is None:
        source = index.info.get("model", {}).get("dir")
        if not source:
            raise InputError(f"{path}: the index does not name the model that built it; pass that model's "
                             f"directory to `polymodal serve` as well")
        from ..api import load

        encoder = load(source).eval()
    index.check_model(encoder, str(path))
    return SearchIndex(index, encoder, str(path))
