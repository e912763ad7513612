"""Speech endpoints: POST /v1/transcribe (audio -> text) and /v1/speak (text -> audio/wav), and the spoken question of /v1/vqa.

Audio arrives as the multipart file field `audio` or as base64 `audio` in JSON (uploads.read_fields), is
sniffed (415 when it is not audio), decoded in memory and refused over `Limits.max_audio_seconds` before it
is decoded in full (413), then transcribed in the model thread. Silence transcribes as "". Spoken replies are
espeak-ng's WAV (503 when espeak-ng is not installed on the server).

Example:
    $ curl -F audio=@question.wav http://127.0.0.1:8000/v1/transcribe
    {"text":"what colour is the circle","duration_s":1.557,"elapsed_ms":31.2,"model":"shapes_asr"}
    $ curl -F image=@scene.png -F audio=@question.wav http://127.0.0.1:8000/v1/vqa     # + "transcript"
    $ curl -H 'Content-Type: application/json' -d '{"text": "red"}' http://127.0.0.1:8000/v1/speak -o reply.wav
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..data.speech import INSTALL_HINT, espeak_available, espeak_wav
from ..models.asr import SAMPLE_RATE
from . import schemas
from .uploads import RequestError, decode_audio

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": schemas.ErrorResponse}
                                           for code in (400, 404, 408, 413, 415, 422, 503, 504)}
TRANSCRIBE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["audio"], "properties": {
        "audio": {"type": "string", "format": "binary", "description": "the recording (wav, flac, mp3, ogg, webm)"},
        "model": {"type": "string", "description": "name of a loaded speech recognizer"},
        "beam_size": {"type": "integer", "minimum": 1, "maximum": 32}}}},
    "application/json": {"schema": schemas.TranscribeJSON.model_json_schema()}}}}
SPEAK_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": schemas.SpeakOptions.model_json_schema()}}}}

router = APIRouter()


def _ms(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 1)


async def transcribe_upload(svc: Any, audio: schemas.AudioUpload, model: str | None = None,
                            beam_size: int | None = None) -> schemas.TranscribeResponse:
    """Decode an upload off the event loop, transcribe it in the model thread (`svc`: the app's Service)."""
    start = time.perf_counter()
    entry = svc.models.pick("transcribe", model)  # 404 with no recognizer loaded, before decoding anything
    wave = await asyncio.to_thread(decode_audio, audio.data, audio.name, svc.limits, SAMPLE_RATE)
    # the length was checked against the server's limit while decoding
    texts = await svc.in_model_thread(functools.partial(entry.model.transcribe, [wave], beam_size, max_seconds=None))
    check = await svc.ood_check(entry.model, wave)  # like its training audio?
    return schemas.TranscribeResponse(**check, text=texts[0], duration_s=round(len(wave) / SAMPLE_RATE, 3),
                                      elapsed_ms=_ms(start), model=entry.name)


async def spoken_question(svc: Any, opts: schemas.VQAOptions) -> tuple[str, schemas.TranscribeResponse | None]:
    """The question of a /v1/vqa request: its text, or what the recognizer hears in its `audio` (and that transcript).

    Raises:
        RequestError: 422 when the recording holds no speech; see `transcribe_upload` for the rest.
    """
    if opts.audio is None:
        return str(opts.question), None
    heard = await transcribe_upload(svc, opts.audio)
    if not heard.text.strip():
        raise RequestError(f"{opts.audio.name}: no speech heard (silence); record the question again, "
                           f"nearer the microphone", 422)
    return heard.text, heard


@router.post("/v1/transcribe", response_model=schemas.TranscribeResponse, responses=ERRORS, tags=["speech"],
             openapi_extra=TRANSCRIBE_BODY)
async def transcribe(request: Request) -> schemas.TranscribeResponse:
    """What is said in an audio upload (any rate and channels; silence gives ""), by a loaded speech recognizer."""
    svc = request.app.state.service
    opts, image, _ = await svc.read_options(request, schemas.TranscribeOptions)
    if image is not None:
        raise RequestError("/v1/transcribe takes an 'audio' file, not an image", 422)
    if opts.audio is None:
        raise RequestError("no audio: upload it as multipart field 'audio' (curl -F audio=@question.wav) "
                           "or send JSON with a base64 'audio'", 422)
    return await transcribe_upload(svc, opts.audio, opts.model, opts.beam_size)


@router.post("/v1/speak", response_class=Response, tags=["speech"], openapi_extra=SPEAK_BODY,
             responses={200: {"content": {"audio/wav": {}}, "description": "the text spoken, a WAV file"}, **ERRORS})
async def speak(request: Request) -> Response:
    """The text spoken by espeak-ng, as audio/wav (e.g. to play an answer of /v1/vqa aloud)."""
    svc = request.app.state.service
    opts, image, _ = await svc.read_options(request, schemas.SpeakOptions)
    if image is not None:
        raise RequestError("/v1/speak takes a 'text', not an image", 422)
    if not espeak_available():
        raise RequestError(f"spoken replies are off: espeak-ng is not installed on the server; {INSTALL_HINT}", 503)
    data = await svc.timed(asyncio.to_thread(espeak_wav, opts.text, opts.voice, opts.speed))
    return Response(data, media_type="audio/wav", headers={"Cache-Control": "no-store"})
