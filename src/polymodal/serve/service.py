"""What the routes share: the server settings, the loaded models and index, the one model thread, the batcher,
and reading a request's options and image within the limits.

Example:
    >>> from polymodal.assets import bundled_model_dir
    >>> from polymodal.serve import engines
    >>> service = Service(engines.ModelSet(engines.load_models([bundled_model_dir()])), None, ServeConfig())
    >>> service.limits.max_bytes == ServeConfig().limits.max_bytes
    True
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from PIL import Image

from ..eval.ood import check_inputs
from . import engines
from .batching import DynamicBatcher
from .uploads import Limits, RequestError, decode_image, read_fields, validate

T = TypeVar("T")


@dataclass
class ServeConfig:
    """Server settings. `max_batch=1` turns dynamic batching off; `continuous=True` lets beam search
    requests join a running batch between steps (see serve/batching.py; measured in docs/benchmarks.md)."""

    limits: Limits = field(default_factory=Limits)
    max_batch: int = 8
    max_wait_ms: float = 25.0
    continuous: bool = False
    max_queue: int = 256
    timeout_s: float = 30.0


class Service:
    """What the routes share: the models, the caption batcher, the index, the settings, the model thread."""

    def __init__(self, models: engines.ModelSet, search: engines.SearchIndex | None, cfg: ServeConfig):
        self.models, self.search, self.cfg, self.limits = models, search, cfg, cfg.limits
        # One model thread: batches, VQA and chat run one at a time, which is what a CPU does best.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-model")
        self.batcher = DynamicBatcher(lambda key, items: engines.run_caption_batch(models, key, items),
                                      self.executor, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue,
                                      (lambda key: engines.open_caption_session(models, key)) if cfg.continuous
                                      else None)
        self.closed = False

    def open(self) -> None:
        """Start serving (app startup); after a `close` (a lifespan run again), with a new model thread."""
        if self.closed:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-model")
            self.batcher.executor, self.closed = self.executor, False
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.closed = True

    async def timed(self, awaitable: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(awaitable, self.cfg.timeout_s)
        except TimeoutError:
            raise RequestError(f"timed out after {self.cfg.timeout_s:g} s; the server is busy, try again",
                               504) from None

    async def in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.timed(asyncio.get_running_loop().run_in_executor(self.executor, fn, *args))

    async def ood_check(self, model: Any, item: Any) -> dict[str, Any]:
        """{"in_distribution", "ood_score"} of one input (an image or a waveform) against the statistics saved with
        `model` (eval/ood.py), in the model thread; {} when the model has none."""
        return (await self.in_model_thread(check_inputs, model, [item]) or [{}])[0]

    async def read_options(self, request: Request, options: type[T]) -> tuple[T, bytes | None, str]:
        """The validated options, the raw image bytes (None if the request has none) and the image's name."""
        try:  # a client that trickles its body is its own problem (408), not the server's (504)
            fields, data, name = await asyncio.wait_for(read_fields(request, self.limits), self.cfg.timeout_s)
        except TimeoutError:
            raise RequestError(f"the request body did not arrive within {self.cfg.timeout_s:g} s; "
                               f"send it again", 408) from None
        image_field = fields.pop("image", None)
        if image_field is not None and not isinstance(image_field, str):
            raise RequestError("'image' must be a base64 string (or upload a file as multipart field 'image')")
        if isinstance(fields.get("messages"), str):  # multipart chat: the conversation as a JSON string
            try:
                fields["messages"] = json.loads(fields["messages"])
            except json.JSONDecodeError:
                raise RequestError("'messages' must be a JSON list of {role, content} objects") from None
        return validate(options, fields), data, name  # type: ignore[arg-type,return-value]

    async def read_image_request(self, request: Request, options: type[T]) -> tuple[T, Image.Image | None]:
        opts, data, name = await self.read_options(request, options)
        image = await asyncio.to_thread(decode_image, data, name, self.limits) if data is not None else None
        return opts, image

    def decode_for_caption(self, entry: engines.LoadedModel, data: bytes | None, name: str) -> tuple[Image.Image, Any]:
        """Decode, resize and normalise in one hop to a worker thread; the model thread only runs the batch."""
        image = decode_image(require(data), name, self.limits)
        return image, engines.prepare_caption(entry, image)


def require(image: T | None) -> T:
    if image is None:
        raise RequestError("no image: upload it as multipart field 'image' (curl -F image=@photo.png) "
                           "or send JSON with a base64 'image'")
    return image
