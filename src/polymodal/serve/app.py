"""The FastAPI app: REST endpoints, dynamic batching of captions, the web page at /.

Endpoints: POST /v1/caption, /v1/vqa, /v1/chat, /v1/retrieve, /v1/explain, /v1/generate, and /v1/transcribe, /v1/speak
(speech_routes.py); GET /v1/models, /v1/index/{id}, /healthz; OpenAPI docs at /docs. Any
`PolymodalError` becomes a 4xx JSON `{"error": "..."}`.

Example:
    >>> from polymodal.assets import bundled_model_dir
    >>> app = create_app([bundled_model_dir()])  # model folders, e.g. "runs/attention_lstm/model"
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # a server  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, DataError, InputError, PolymodalError
from ..eval.explain import explain as explain_output
from . import engines, schemas, speech_routes
from .service import ServeConfig, Service, require
from .uploads import LingeringClose, RequestError, validation_message

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("polymodal.serve")
T = TypeVar("T")
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": schemas.ErrorResponse}
                                           for code in (400, 404, 408, 413, 415, 422, 503, 504)}
STATUS = {DataError: 422, InputError: 422, ConfigError: 422}  # for errors that carry no status of their own


def _ms(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 1)


def _service(request: Request) -> Service:
    return request.app.state.service


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace pydantic's local `#/$defs/...` references by their definitions: inside an OpenAPI
    operation they would point at nothing (the chat `messages` items were unresolvable)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field's schema: as in JSON, minus `null` (an optional field is simply left out)."""
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **options[0]}
    return {k: v for k, v in schema.items() if k != "default" or v is not None}


def _body_doc(model: type, multipart: bool = True) -> dict[str, Any]:
    """OpenAPI request body for endpoints that read the body themselves (multipart or JSON).

    Both forms carry the same fields with the same types and limits; in multipart the image is a
    file part and a list field (chat `messages`) is one JSON-encoded part.
    """
    schema = _inline_defs(model.model_json_schema())
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if multipart:
        props = {k: ({"type": "string", "format": "binary"} if k in ("image", "audio") else _form_field(v))
                 for k, v in schema.get("properties", {}).items()}
        form: dict[str, Any] = {"type": "object", "properties": props}
        if schema.get("required"):
            form["required"] = schema["required"]
        encoding = {k: {"contentType": "application/json"} for k, v in props.items() if v.get("type") == "array"}
        content["multipart/form-data"] = {"schema": form, **({"encoding": encoding} if encoding else {})}
    return {"requestBody": {"required": True, "content": content}}


router = APIRouter()


@router.get("/healthz", tags=["meta"])
async def healthz(request: Request) -> dict[str, Any]:
    """Liveness: the models are loaded and the batch worker is running."""
    svc = _service(request)
    return {"status": "ok" if svc.batcher.running else "starting", "models": len(svc.models.entries),
            "pending": svc.batcher.pending, "batching": svc.batcher.stats.as_dict()}


@router.get("/v1/models", response_model=schemas.ModelsResponse, tags=["meta"])
async def list_models(request: Request) -> dict[str, Any]:
    """The loaded models, what each can do, the index (if any) and the request limits."""
    svc = _service(request)
    return {"models": [e.info() for e in svc.models.entries.values()],
            "index": svc.search.info() if svc.search else None, "limits": svc.limits.as_dict()}


@router.post("/v1/caption", response_model=schemas.CaptionResponse, responses=ERRORS, tags=["captions"],
             openapi_extra=_body_doc(schemas.CaptionJSON))
async def caption(request: Request) -> schemas.CaptionResponse:
    """Caption an image: beam search or sampling, n-best with scores, attention heatmaps per word."""
    start, svc = time.perf_counter(), _service(request)
    with svc.batcher.announce():  # a batch being formed now waits for this request (up to max_wait_ms)
        opts, data, name = await svc.read_options(request, schemas.CaptionOptions)
        entry = svc.models.pick("caption", opts.model)
        prompt = engines.caption_prompt(entry, opts)  # first: a control the model lacks is named before its words
        generation = engines.generation_config(entry, opts)
        image, item = await asyncio.to_thread(svc.decode_for_caption, entry, data, name)
    result, batch = await svc.timed(svc.batcher.submit(engines.caption_key(entry, generation, prompt), item))
    view = heatmaps = note = objects = None
    if opts.heatmaps and result["attention"] is not None:
        view, heatmaps = await asyncio.to_thread(engines.render_heatmaps, image, result["attention"])
        objects = engines.object_markers(entry, result["words"], result["attention"])
    elif opts.heatmaps:
        note = f"model {entry.name!r} has no attention, so there are no heatmaps"
    check = await svc.ood_check(entry.model, image)  # is it like the training data?
    return schemas.CaptionResponse(**check,
        model=entry.name, captions=[{"text": t, "score": s} for t, s in result["captions"]], words=result["words"],
        heatmaps=heatmaps, view=view, objects=objects, note=note, width=image.width, height=image.height, batch_size=batch,
        elapsed_ms=_ms(start))


@router.post("/v1/vqa", response_model=schemas.VQAResponse, responses=ERRORS, tags=["questions"],
             openapi_extra=_body_doc(schemas.VQAJSON))
async def vqa(request: Request) -> schemas.VQAResponse:
    """Answer a question about an image (a VQA model; a chat model answers if no VQA model is loaded).

    The question is typed (`question`) or spoken (`audio`, transcribed by a loaded speech recognizer; the
    response's `transcript` says what was heard).
    """
    start, svc = time.perf_counter(), _service(request)
    opts, image = await svc.read_image_request(request, schemas.VQAOptions)
    try:
        entry = svc.models.pick("vqa", opts.model)
    except RequestError:
        if opts.model or not any("chat" in e.tasks for e in svc.models.entries.values()):
            raise
        entry = svc.models.pick("chat")  # a chat model answers single questions too
    image = require(image)
    question, transcript = await speech_routes.spoken_question(svc, opts)
    check: dict[str, Any] = {}
    if "vqa" not in entry.tasks:
        reply = await svc.in_model_thread(entry.model.chat, image, [{"role": "user", "content": question}])
        answers = [{"answer": reply, "score": None}]
    elif callable(getattr(entry.model, "answer_topk", None)):
        top = await svc.in_model_thread(entry.model.answer_topk, image, question, opts.k)
        answers = [{"answer": a, "score": s} for a, s in top[0]]
        sure = getattr(entry.model, "confident", None)  # calibrated probability above the model's threshold?
        check = {"probability": top[0][0][1], "confident": sure(top[0][0][1]) if callable(sure) else None}
    else:
        answers = [{"answer": (await svc.in_model_thread(entry.model.answer, image, question))[0]}]
    if "vqa" in entry.tasks:  # is the image like the training data?
        check.update(await svc.ood_check(entry.model, image))
    return schemas.VQAResponse(**check, model=entry.name, question=question, transcript=transcript, answers=answers,
                               elapsed_ms=_ms(start))


@router.post("/v1/chat", response_model=schemas.ChatResponse, responses=ERRORS, tags=["questions"],
             openapi_extra=_body_doc(schemas.ChatJSON))
async def chat(request: Request) -> Response:
    """Reply to a conversation about an image; `stream: true` sends the reply as server-sent events.

    The models generate the whole reply first (their API is not incremental), then it is streamed
    word by word: `event: token` per word, then `event: done` with the full response.
    """
    start, svc = time.perf_counter(), _service(request)
    opts, image = await svc.read_image_request(request, schemas.ChatOptions)
    entry = svc.models.pick("chat", opts.model)
    messages = [m.model_dump() for m in opts.messages]
    sure: dict[str, Any] = {}
    if callable(getattr(entry.model, "chat_reply", None)):  # the reply with its calibrated confidence
        said = await svc.in_model_thread(entry.model.chat_reply, require(image), messages)
        reply, sure = said.text, {"confidence": said.confidence, "not_sure": said.not_sure,
                                  "points": [list(p) for p in said.points]}
    else:
        reply = await svc.in_model_thread(entry.model.chat, require(image), messages)
    check = await svc.ood_check(entry.model, image)  # like the training images?
    response = schemas.ChatResponse(**check, **sure, model=entry.name, message={"role": "assistant", "content": reply},
                                    elapsed_ms=_ms(start))
    if not opts.stream:
        return JSONResponse(response.model_dump())

    async def events() -> AsyncIterator[str]:
        for word in reply.split():
            yield f"event: token\ndata: {json.dumps({'token': word})}\n\n"
            await asyncio.sleep(0)  # hand each event to the transport on its own
        yield f"event: done\ndata: {response.model_dump_json()}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/v1/retrieve", response_model=schemas.RetrieveResponse, responses=ERRORS, tags=["search"],
             openapi_extra=_body_doc(schemas.RetrieveJSON))
async def retrieve(request: Request) -> schemas.RetrieveResponse:
    """Search the index given with `--index` by text (or by an example image)."""
    start, svc = time.perf_counter(), _service(request)
    if svc.search is None:
        raise RequestError("no index loaded; start the server with --index INDEX_DIR "
                           "(build one with `polymodal index`)", 404)
    opts, image = await svc.read_image_request(request, schemas.RetrieveOptions)
    if (image is None) == (opts.text is None):
        raise RequestError("give exactly one query: 'text', or an 'image' to search by example")
    hits = await svc.in_model_thread(svc.search.search, image if image is not None else opts.text, opts.k)
    check: dict[str, Any] = {}
    if image is not None and svc.search.encoder is not None:  # an example image unlike the encoder's training data?
        check = await svc.ood_check(svc.search.encoder, image)
    return schemas.RetrieveResponse(**check, query=opts.text or "<image>", elapsed_ms=_ms(start),
                                    hits=[{"id": i, "path": p, "score": s} for i, p, s in hits])


@router.post("/v1/explain", response_model=schemas.ExplainResponse, responses=ERRORS, tags=["explain"],
             openapi_extra=_body_doc(schemas.ExplainJSON))
async def explain(request: Request) -> schemas.ExplainResponse:
    """Which image regions and words an output rests on (eval/explain.py): a VQA answer ('question'), a search
    match ('text' with an uploaded image, or with 'item', a hit of the index), or a caption (neither)."""
    start, svc = time.perf_counter(), _service(request)
    opts, image = await svc.read_image_request(request, schemas.ExplainOptions)
    if opts.item is not None:
        if svc.search is None or svc.search.encoder is None or not opts.text:
            raise RequestError("'item' explains a search hit: give the query as 'text', on a server started with "
                               "an index (--index)", 404 if svc.search is None else 422)
        model, name = svc.search.encoder, "index encoder"
        image = await asyncio.to_thread(svc.search.image, opts.item)
    else:
        entry = svc.models.pick("vqa" if opts.question else "retrieve" if opts.text and any(
            "retrieve" in e.tasks for e in svc.models.entries.values()) else "caption", opts.model)
        model, name = entry.model, entry.name
    image = require(image)
    why = await svc.in_model_thread(functools.partial(explain_output, model, image, question=opts.question,
                                                      text=opts.text, method=opts.method, grid=opts.grid))
    overlay = await asyncio.to_thread(engines.explanation_png, image, why.regions)
    return schemas.ExplainResponse(model=name, overlay=overlay, elapsed_ms=_ms(start), **why.to_dict())


@router.post("/v1/generate", response_model=schemas.GenerateResponse, responses=ERRORS, tags=["generate"])
async def generate(request: Request, opts: schemas.GenerateOptions) -> schemas.GenerateResponse:
    """Draw what the prompt says with a loaded text-to-image model: n PNGs, the same for the same seed."""
    start, svc = time.perf_counter(), _service(request)
    entry = svc.models.pick("generate", opts.model)
    images = await svc.in_model_thread(functools.partial(entry.model.generate_images, opts.prompt, n=opts.n,
                                                         seed=opts.seed, steps=opts.steps, guidance=opts.guidance,
                                                         box=opts.box, strict_box=opts.strict_box))
    pngs = await asyncio.to_thread(lambda: [engines.png_base64(image) for image in images])
    return schemas.GenerateResponse(model=entry.name, prompt=opts.prompt, images=pngs, elapsed_ms=_ms(start),
                                    unknown_words=entry.model.unknown_words(opts.prompt))


@router.get("/v1/index/{item}", tags=["search"], responses=ERRORS, response_class=Response)
async def index_image(request: Request, item: int) -> Response:
    """A JPEG thumbnail of one indexed image (by its id in /v1/retrieve hits)."""
    svc = _service(request)
    if svc.search is None:
        raise RequestError("no index loaded; start the server with --index INDEX_DIR", 404)
    data = await asyncio.to_thread(svc.search.thumbnail, item)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PolymodalError)
    async def _polymodal_error(request: Request, err: PolymodalError) -> JSONResponse:
        status = getattr(err, "status", None) or next((s for t, s in STATUS.items() if isinstance(err, t)), 500)
        message = scrub(str(err), request.app.state.private_roots)
        # 408/413 may come with body bytes still unread: close the connection (keep-alive would discard the
        # rest without bound); LingeringClose first drains a bounded amount so the client reads this answer.
        headers = {"Connection": "close"} if status in (408, 413) else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code in (404, 405):  # say which request and where the list of routes is
            message = f"{message}: {request.method} {request.url.path}; the API is listed at /docs"
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _bug(_: Request, err: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=err)
        return JSONResponse({"error": f"internal server error ({type(err).__name__}); see the server log"},
                            status_code=500)


def private_roots(models: Sequence[str | Path] | dict[str, Any], index: Any) -> list[str]:
    """Server-side folders that error messages must not show: where the models, the index and the
    indexed images live, the working directory, home, the temp folder and the Python installation."""
    roots = {os.getcwd(), str(Path.home()), sys.prefix, tempfile.gettempdir()}
    if not isinstance(models, dict):
        roots |= {str(Path(m).resolve().parent) for m in models}
    if isinstance(index, (str, Path)):
        roots.add(str(Path(index).resolve().parent))
    return sorted((r for r in roots if r not in ("", "/")), key=len, reverse=True)


def scrub(message: str, roots: Sequence[str]) -> str:
    """`message` with every server-side folder in `roots` cut from the paths it contains.

    Example:
        >>> scrub("/srv/models/tiny/config.json: not valid JSON", ["/srv/models"])
        'tiny/config.json: not valid JSON'
    """
    for root in roots:
        message = message.replace(root.rstrip("/") + "/", "")
    return message


def create_app(models: Sequence[str | Path] | dict[str, Any], index: Any = None,
               config: ServeConfig | None = None) -> FastAPI:
    """Build the app for model directories (or {name: model}) and an optional retrieval index.

    Args:
        models: model directories to `polymodal.load`, or already loaded models by name.
        index: a retrieval index folder (from `polymodal index`), or an index object (see `SearchIndex`).
        config: limits, batching and timeout settings.

    Example:
        >>> import io
        >>> from fastapi.testclient import TestClient
        >>> import polymodal
        >>> from polymodal.assets import bundled_model_dir
        >>> from polymodal.data.shapes import Scene, ShapeObject, render
        >>> png = io.BytesIO()
        >>> scene = Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), background=(40, 40, 40))
        >>> render(scene, 64).save(png, "PNG")
        >>> app = create_app({"tiny": polymodal.load(bundled_model_dir())})
        >>> with TestClient(app) as client:  # in-process, no server
        ...     upload = {"image": ("a.png", png.getvalue(), "image/png")}
        ...     reply = client.post("/v1/caption", files=upload).json()
        >>> reply["model"], reply["captions"][0]["text"], reply["words"][:3]
        ('tiny', 'a large red circle', ['a', 'large', 'red'])
    """
    cfg = config or ServeConfig()
    model_set = engines.ModelSet(models if isinstance(models, dict) else engines.load_models(models))
    search = None
    if index is not None:
        search = engines.open_index(index, model_set) if isinstance(index, (str, Path)) else engines.SearchIndex(index)
    service = Service(model_set, search, cfg)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.open()
        yield
        await service.close()

    app = FastAPI(title="polymodal", version="0.1.0", lifespan=lifespan,
                  description="Captions, answers and search over images, served from local models. "
                              "Images are processed in memory and never stored.")
    app.state.service = service
    app.state.private_roots = private_roots(models, index)
    if search is not None and search.kind == "image" and search.items:
        folders = [os.path.dirname(os.path.abspath(p)) for p in search.items]
        app.state.private_roots = sorted({*app.state.private_roots, os.path.commonpath(folders)}, key=len, reverse=True)
    _add_error_handlers(app)
    app.add_middleware(LingeringClose, limits=cfg.limits)
    app.include_router(router)
    app.include_router(speech_routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
