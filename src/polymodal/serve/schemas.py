"""Request and response bodies of the REST API (pydantic), shared by the routes and the OpenAPI docs.

Every image-taking request comes either as multipart form data (an `image` file part plus the
other fields as form values) or as JSON with the image base64-encoded; both are validated by the
same model, so a form field "beam_size=abc" and a JSON `"beam_size": "abc"` fail alike (422).

Example:
    >>> CaptionOptions(beam_size=5, nbest=3).nbest
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

# Forbid unknown keys: a typo such as "beam" for "beam_size" must fail loudly, not be ignored.
_STRICT = ConfigDict(extra="forbid")
# What a JSON `image` holds (OpenAPI 3.1 / JSON Schema 2020-12 content keywords).
BASE64_IMAGE = {"contentEncoding": "base64", "contentMediaType": "image/*"}
BASE64_AUDIO = {"contentEncoding": "base64", "contentMediaType": "audio/*"}


@dataclass(frozen=True)
class AudioUpload:
    """An uploaded audio file (multipart field `audio`, or base64 `audio` in JSON), still undecoded."""

    data: bytes
    name: str = "audio"


class CaptionOptions(BaseModel):
    """How to caption: decoding strategy, beam width, how many captions, attention heatmaps."""

    model_config = _STRICT

    model: str | None = Field(None, description="name of a loaded captioner (see GET /v1/models); default: the first")
    strategy: Literal["beam", "greedy", "sample"] = "beam"
    beam_size: int = Field(3, ge=1, le=16)
    nbest: int = Field(1, ge=1, le=16, description="captions to return, best first (beam n-best or samples)")
    max_len: int | None = Field(None, ge=1, le=64, description="most tokens to generate (default: the model's)")
    heatmaps: bool = Field(False, description="return one attention overlay (base64 PNG) per word of the best caption")
    seed: int | None = Field(None, description="sampling seed, for reproducible samples")
    banned_words: list[str] = Field(default_factory=list, max_length=100,
                                    description="words the captions must not say (e.g. [\"red\", \"blue\"]), or "
                                                "groups: colours, shapes, sizes, positions")
    force_words: list[str] = Field(default_factory=list, max_length=8,
                                   description="words every caption must say (e.g. [\"red\", \"circle\"]; "
                                               "constrained beam search, beam_size >= 2); a group (colours, ...) "
                                               "means any one of its words")
    omit_words: list[str] = Field(default_factory=list, max_length=100,
                                  description="words left out of what the model says (e.g. [\"colours\"]: 'a red "
                                              "circle' -> 'a circle'); for modifiers, where banning makes the model "
                                              "invent something else")

    max_new_words: int | None = Field(None, ge=1, le=64, description="word budget: the caption ends within this "
                                                                    "many words (constrained decoding)")
    length: Literal["short", "normal", "detailed"] | None = Field(
        None, description="caption length; only for a captioner trained with controls (GET /v1/models: controls)")
    form: Literal["list", "sentence"] | None = Field(
        None, description="a list of the objects or one relational sentence; a captioner trained with controls")
    focus_point: list[float] | None = Field(None, min_length=2, max_length=2, description="describe the object at "
                                            "x, y (in [0, 1], y down; a form field may say \"0.3,0.6\")")
    focus_box: list[float] | None = Field(None, min_length=4, max_length=4,
                                          description="describe the object in the box x0, y0, x1, y1 (in [0, 1])")
    focus_phrase: str | None = Field(None, min_length=1, max_length=100,
                                     description="describe the object a phrase names, e.g. \"the red one\"")

    @field_validator("focus_point", "focus_box", mode="before")
    @classmethod
    def _numbers(cls, value: object) -> object:
        """A form field may give the numbers comma-separated: "0.3,0.6"."""
        if isinstance(value, str):
            try:
                return [float(v) for v in value.split(",")]
            except ValueError:
                raise ValueError(f"{value!r}: give comma-separated numbers in [0, 1], e.g. 0.3,0.6") from None
        return value

    @field_validator("banned_words", "force_words", "omit_words", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """A form field (multipart keeps one value per name) may list its words comma-separated: "red,circle"."""
        if isinstance(value, str):
            words = [w.strip() for w in value.split(",") if w.strip()]
            if not words:
                raise ValueError(f"{value!r} names no word; give comma-separated words, e.g. red,circle")
            return words
        return value

    @model_validator(mode="after")
    def _nbest_fits_beam(self) -> CaptionOptions:
        if self.strategy == "beam" and self.nbest > self.beam_size:
            raise ValueError(f"nbest ({self.nbest}) cannot exceed beam_size ({self.beam_size}); "
                             f"raise beam_size or lower nbest")
        if self.strategy == "greedy" and self.nbest > 1:
            raise ValueError("greedy decoding gives one caption; use strategy=beam or sample for nbest > 1")
        return self


class ImageJSON(BaseModel):
    """The JSON form of an image: base64 bytes of the file (a `data:image/...;base64,` prefix is fine)."""

    image: str = Field(..., min_length=1, description="base64-encoded image file (PNG, JPEG, GIF, WebP, BMP, TIFF)",
                       json_schema_extra=BASE64_IMAGE)


class CaptionJSON(CaptionOptions, ImageJSON):
    """POST /v1/caption as JSON."""


class Caption(BaseModel):
    text: str
    score: float | None = Field(None, description="length-normalised log-probability (higher is better)")


class ObjectMarker(BaseModel):
    phrase: str = Field(description="the object phrase, e.g. 'small red circle'")
    start: int = Field(description="index of its first word in `words`")
    end: int = Field(description="index after its last word (its noun is end - 1)")
    x: float = Field(description="the attention peak of its noun, 0 (left) .. 1 (right) of the view")
    y: float = Field(description="the attention peak of its noun, 0 (top) .. 1 (bottom) of the view")


class CaptionResponse(BaseModel):
    model: str
    captions: list[Caption]
    words: list[str] = Field(default_factory=list, description="the best caption's words (one heatmap each)")
    heatmaps: list[str] | None = Field(None, description="base64 PNG per word: the attention over the image")
    view: str | None = Field(None, description="base64 PNG of the square the model saw (heatmaps are drawn on it)")
    objects: list[ObjectMarker] | None = Field(None, description="with heatmaps: each object the caption names and "
                                               "where the model looked when it named it, to check it")
    note: str | None = None
    in_distribution: bool | None = Field(None, description="False: the image is unlike the model's training data, "
                                         "so the caption is a guess; null: the model has no statistics to tell")
    ood_score: float | None = Field(None, description="out-of-distribution score (Mahalanobis distance of the "
                                    "image's features; above the model's threshold = out of distribution)")
    width: int
    height: int
    batch_size: int = Field(1, description="how many requests shared this forward pass (dynamic batching)")
    elapsed_ms: float


class VQAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | None = None
    question: str | None = Field(None, min_length=1, max_length=500, description="the question as text")
    audio: SkipJsonSchema[AudioUpload | None] = None  # the question spoken: multipart file or base64 (VQAJSON)
    k: int = Field(3, ge=1, le=20, description="answers to return with their probabilities")

    @model_validator(mode="after")
    def _one_question(self) -> VQAOptions:
        if (self.question is None) == (self.audio is None):
            raise ValueError("ask one question: 'question' as text, or 'audio' (a recording of it), not both")
        return self


class VQAJSON(VQAOptions, ImageJSON):
    """POST /v1/vqa as JSON."""

    audio: str | None = Field(None, min_length=1, description="the question spoken instead of typed: a base64 audio "
                              "file (wav, flac, mp3, ogg, webm), transcribed by a loaded speech recognizer",
                              json_schema_extra=BASE64_AUDIO)


class Answer(BaseModel):
    answer: str
    score: float | None = None


class TranscribeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | None = Field(None, description="name of a loaded speech recognizer; default: the first")
    beam_size: int | None = Field(None, ge=1, le=32, description="CTC beam width; 1 = greedy; default: the model's")
    audio: SkipJsonSchema[AudioUpload | None] = None


class TranscribeJSON(TranscribeOptions):
    """POST /v1/transcribe as JSON."""

    audio: str = Field(..., min_length=1, description="base64 audio file (wav, flac, mp3, ogg, webm; any rate, "
                       "any channels)", json_schema_extra=BASE64_AUDIO)


class TranscribeResponse(BaseModel):
    text: str = Field(description="what was said; empty for silence")
    duration_s: float = Field(description="length of the audio in seconds")
    elapsed_ms: float
    model: str
    in_distribution: bool | None = Field(None, description="False: the recording is unlike the recognizer's "
                                         "training audio, so the transcript is a guess; null: no statistics saved")
    ood_score: float | None = Field(None, description="out-of-distribution score (Mahalanobis distance of the "
                                   "pooled encoder states)")


class SpeakOptions(BaseModel):
    model_config = _STRICT

    text: str = Field(..., min_length=1, max_length=500, description="what to say")
    voice: str = Field("en-us", pattern=r"^[a-z][a-z0-9-]{0,30}(\+[a-z0-9]{1,8})?$",
                       description="espeak-ng voice, e.g. en-gb+f2 (`espeak-ng --voices=en`)")
    speed: int = Field(160, ge=80, le=400, description="words per minute")


class VQAResponse(BaseModel):
    model: str
    question: str
    transcript: TranscribeResponse | None = Field(None, description="with an 'audio' question: what the speech "
                                                  "recognizer heard (the question answered)")
    answers: list[Answer]
    probability: float | None = Field(None, description="the best answer's calibrated probability (temperature-"
                                      "scaled, docs/calibration.md); null for a chat model's reply")
    confident: bool | None = Field(None, description="False: the probability is below the model's confidence "
                                   "threshold, so the model is not sure; null: the model gives no probability")
    in_distribution: bool | None = Field(None, description="False: the image is unlike the model's training data, "
                                         "so the answer is a guess; null: the model has no statistics to tell")
    ood_score: float | None = Field(None, description="out-of-distribution score (Mahalanobis distance of the "
                                    "image's features; above the model's threshold = out of distribution)")
    elapsed_ms: float


class Message(BaseModel):
    model_config = _STRICT

    role: Literal["user", "assistant"]
    content: str = Field(..., min_length=1, max_length=2000)


class ChatOptions(BaseModel):
    model_config = _STRICT

    model: str | None = None
    messages: list[Message] = Field(..., min_length=1, max_length=64,
                                    description="the conversation so far, ending with the user's turn")
    stream: bool = Field(False, description="stream the reply word by word as server-sent events")

    @model_validator(mode="after")
    def _ends_with_user(self) -> ChatOptions:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's question (role 'user')")
        return self


class ChatJSON(ChatOptions, ImageJSON):
    """POST /v1/chat as JSON."""


class ChatResponse(BaseModel):
    model: str
    message: Message
    elapsed_ms: float
    in_distribution: bool | None = Field(None, description="False: the image is unlike the model's training data, "
                                         "so the reply is a guess; null: the model has no statistics saved")
    ood_score: float | None = Field(None, description="out-of-distribution score of the image")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="the reply's calibrated probability: the "
                                     "product of its tokens' probabilities, temperature-scaled (docs/reliability.md); "
                                     "null for a model that gives none")
    not_sure: bool | None = Field(None, description="True: the confidence is below the model's threshold, so the "
                                  "reply says it is not sure and gives its best guess; null: the model has no "
                                  "threshold saved")
    points: list[list[float]] = Field(default_factory=list, description="where the reply pointed before it answered: "
                                      "[x, y] centres in [0, 1] of the image, one per object it is about "
                                      "(position, relation and count replies of a model trained to point)")


class RetrieveOptions(BaseModel):
    model_config = _STRICT

    text: str | None = Field(None, min_length=1, max_length=500, description="a text query")
    k: int = Field(8, ge=1, le=100)


class RetrieveJSON(RetrieveOptions):
    """POST /v1/retrieve as JSON: a text query, or an image query (base64)."""

    image: str | None = Field(None, min_length=1, description="base64 image query (instead of text)",
                              json_schema_extra=BASE64_IMAGE)

    @model_validator(mode="after")
    def _one_query(self) -> RetrieveJSON:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one query: 'text' or 'image'")
        return self


class Hit(BaseModel):
    id: int = Field(..., description="position in the index; GET /v1/index/{id} returns the image")
    path: str
    score: float


class RetrieveResponse(BaseModel):
    query: str
    hits: list[Hit]
    elapsed_ms: float
    in_distribution: bool | None = Field(None, description="searching by image: False when the query image is "
                                         "unlike the encoder's training data (the matches are a guess); null for "
                                         "text queries or without statistics")
    ood_score: float | None = Field(None, description="out-of-distribution score of the query image")


class ExplainOptions(BaseModel):
    model_config = _STRICT

    model: str | None = Field(None, description="the model to explain (default: the first that fits the request)")
    question: str | None = Field(None, min_length=1, max_length=500, description="explain a VQA answer to this")
    text: str | None = Field(None, min_length=1, max_length=500, description="explain the match of this text "
                             "(dual encoder), or this caption (captioner)")
    item: int | None = Field(None, ge=0, description="explain a search hit: this index image (GET /v1/index/{id}) "
                             "instead of an uploaded image, with 'text' the query")
    method: str = Field("deletion_preservation", description="deletion_preservation | occlusion | gradient_x_input")
    grid: int = Field(8, ge=2, le=16, description="cells per side of the region grid")


class ExplainJSON(ExplainOptions):
    """POST /v1/explain as JSON: a base64 'image', or a search hit's 'item'."""

    image: str | None = Field(None, min_length=1, description="base64-encoded image file (or give 'item')",
                              json_schema_extra=BASE64_IMAGE)


class WordImportance(BaseModel):
    word: str
    importance: float


class ExplainResponse(BaseModel):
    model: str
    kind: str = Field(description="vqa | retrieval | caption")
    output: str = Field(description="what is explained: the answer, the text matched, the caption")
    method: str
    score: float = Field(description="the output's score on the intact image (VQA: log-odds of the answer)")
    grid: int
    regions: list[list[float]] = Field(description="grid x grid importance of each image cell, row-major")
    words: list[WordImportance]
    overlay: str = Field(description="base64 PNG: the image with the important regions in heat colours")
    elapsed_ms: float


class GenerateOptions(BaseModel):
    model_config = _STRICT

    model: str | None = Field(None, description="the image generator (default: the first loaded)")
    prompt: str = Field(..., min_length=1, max_length=1000, description="what to draw")
    n: int = Field(4, ge=1, le=8, description="images to draw")
    steps: int | None = Field(None, ge=1, le=200, description="sampler steps (default: the model's)")
    guidance: float | None = Field(None, ge=0.0, le=20.0, description="classifier-free guidance scale (default: the "
                                   "model's; 0 ignores the prompt)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the same seed draws the same images")
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="draw it inside the box x0, y0, "
                                    "x1, y1 (in [0, 1], y down); a generator trained with layouts")
    strict_box: bool = Field(False, description="draw nothing outside the box (objects land in it more often, "
                             "drawn worse)")


class GenerateResponse(BaseModel):
    model: str
    prompt: str
    images: list[str] = Field(description="base64 PNGs")
    unknown_words: list[str] = Field(description="prompt words the model never saw in training (ignored)")
    elapsed_ms: float


class ModelInfo(BaseModel):
    name: str
    architecture: str
    tasks: list[str]
    image_size: int | None = None
    parameters: int
    attention: bool = False
    controls: list[str] = Field(default_factory=list, description="controls the model was trained with: a "
                                                                  "captioner's length, form, focus; a generator's box")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    index: dict | None = Field(None, description="the retrieval index given with --index, if any")
    limits: dict


class ErrorResponse(BaseModel):
    error: str
