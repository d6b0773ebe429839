"""An HTTP prediction server: FastAPI, run by uvicorn.

``create_app(model)`` builds the app around any model with ``task``, ``classes_`` and
``predict_proba(list)``: a headstart classifier (PyTorch) or an ONNX export run by
:class:`headstart.deploy.runtime.OnnxClassifier`. Requests that arrive within a few milliseconds of
each other are answered by one model call (micro-batching: a queue collects them up to
``max_batch`` inputs or ``max_wait_ms``, the model runs in a worker thread so the event loop
keeps accepting requests). Limits are checked before any work: request size (413), content
type (415), unreadable images and empty texts (422, with a message), images of more than
``max_pixels`` pixels (413, refused from their header before any pixel is decoded). Uploads
are read into memory, never written to disk; each image is cut down to the small image the
model's preprocessing needs right after decoding, so a request holds at most one full-size
image at a time, at most ``DECODE_SLOTS`` full-size images are decoded at once in the whole
process, and at most ``max_concurrent`` requests are worked on at once (others get 503 with
``Retry-After``): the server's memory has a bound.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and `Request` is imported inside create_app (FastAPI is an optional extra).

import asyncio
import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..errors import DataError, HeadstartError
from ..data.labels import top_k_results  # noqa: F401 - the studio's answers are the server's

log = logging.getLogger("headstart.deploy.serve")

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_INPUTS = 32
DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_MAX_PIXELS = 25_000_000  # a 5000 x 5000 photo; 75 MB once decoded to RGB
DEFAULT_MAX_CONCURRENT = 32  # a full default batch of one-image requests
# Full-size images decoded at once, over all requests: each can take a few times
# max_pixels * 4 bytes while it is converted to RGB and cut down.
DECODE_SLOTS = 2
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


def load_model(path: str | Path):
    """A model directory (PyTorch) or an ONNX export (directory or ``.onnx`` file)."""
    from .runtime import OnnxClassifier, find_export

    if find_export(path) is not None:
        return OnnxClassifier.load(path)
    from ..classifiers.loading import load

    return load(path)


class Batcher:
    """Collects the inputs of concurrent requests into one model call.

    A request's inputs are never split; a batch closes when it holds ``max_batch`` inputs
    or ``max_wait`` seconds after its first request, whichever comes first. Requests that
    arrive while the model runs wait in the queue and form the next batch.
    """

    def __init__(self, predict, executor: ThreadPoolExecutor, max_batch: int, max_wait: float):
        self.predict, self.executor = predict, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0  # model calls, for /health and the tests

    def _ensure_running(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.task is None or self.task.done():
            # A new event loop (a test client without lifespan, a restart): a fresh queue on it.
            self.loop, self.queue = loop, asyncio.Queue()
            self.task = loop.create_task(self._run())
        assert self.queue is not None
        return self.queue

    async def submit(self, items: list) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self._ensure_running().put((items, future))
        return await future

    async def _run(self) -> None:
        queue = self.queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        carry = None  # a request that did not fit the last batch opens the next one
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            batch, size = [first], len(first[0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    nxt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if size + len(nxt[0]) > self.max_batch:
                    carry = nxt
                    break
                batch.append(nxt)
                size += len(nxt[0])
            await self._answer(batch)

    async def _answer(self, batch: list[tuple[list, asyncio.Future]]) -> None:
        live = [(items, fut) for items, fut in batch if not fut.done()]  # a client may have gone
        if not live:
            return
        items = [x for its, _ in live for x in its]
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, items)
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail its neighbours
            if len(live) == 1:
                if not live[0][1].done():
                    live[0][1].set_exception(exc)
                return
            for one in live:
                await self._answer([one])
            return
        self.batches += 1
        start = 0
        for its, fut in live:
            if not fut.done():
                fut.set_result(probs[start : start + len(its)])
            start += len(its)

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def model_preprocessing(model) -> dict[str, Any] | None:
    """The image preprocessing of a served model (input size, crop, interpolation), None
    when the model does not say (any object with ``predict_proba`` can be served)."""
    pre = getattr(model, "preprocessing", None)  # an ONNX export's description
    if pre is None and getattr(model, "preprocessing_", None) is not None:  # a PyTorch classifier
        pre = model.preprocessing_.to_dict()
    return pre if isinstance(pre, dict) and {"input_size", "crop_pct"} <= set(pre) else None


def prepare_image(data: bytes, preprocessing: dict[str, Any] | None, max_pixels: int):
    """Decode one upload (refused from its header when over ``max_pixels``) and keep only
    what the model needs of it; the full-size image is dropped here."""
    from .runtime import decode_image, model_input_image, short_side

    with _decode_slots:  # a thread semaphore: decoding runs in worker threads, whatever the event loop
        # JPEGs decode at the reduced scale training and `predict` use, so all paths agree
        image = decode_image(data, max_pixels=max_pixels, draft=short_side(preprocessing) if preprocessing else None)
        return image if preprocessing is None else model_input_image(image, preprocessing, max_pixels)


def static_text(name: str) -> str:
    """A file of the package's static folder (the web pages and their scripts)."""
    return resources.files("headstart.deploy").joinpath("static", name).read_text(encoding="utf-8")


def _page() -> str:
    return static_text("index.html")


async def read_limited_body(request, max_bytes: int, max_upload_mb: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``
    (from Content-Length, else while it streams in)."""
    from fastapi import HTTPException

    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HTTPException(413, f"request of {int(length)} bytes exceeds the limit of {max_upload_mb:g} MB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"request exceeds the limit of {max_upload_mb:g} MB")
    return bytes(body)


async def parse_multipart(request, body: bytes, *, max_files: int, max_fields: int, max_part_size: int):
    """A multipart body already read (and bounded) into memory, parsed without spooling to
    disk; too many parts is 413, a malformed body 422."""
    from fastapi import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser

    class InMemoryParser(MultiPartParser):
        spool_max_size = len(body) + 1  # uploads stay in memory (the body is already bounded)

    async def stream():
        yield body

    # max_part_size bounds each non-file field; it is a constructor argument - a class
    # attribute would be overwritten by __init__.
    parser = InMemoryParser(request.headers, stream(), max_files=max_files, max_fields=max_fields,
                            max_part_size=max_part_size)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        status = 413 if "Too many" in exc.message or "exceeded" in exc.message else 422
        raise HTTPException(status, f"cannot read the multipart body: {exc.message}") from None




_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                },
                "encoding": {"files": {"contentType": "image/*"}},
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "texts": {"type": "array", "items": {"type": "string"}},
                        "text": {"type": "string"},
                    },
                },
                "example": {"texts": ["a moving, funny film", "I hate that"]},
            },
        },
    }
}


def create_app(
    model,
    *,
    batching: bool = True,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    top_k: int = 5,
):
    """The FastAPI app serving ``model``.

    ``batching=False`` answers each request with its own model call (one at a time), the
    baseline the load benchmark compares against. ``max_pixels`` bounds one image,
    ``max_concurrent`` the prediction requests worked on at once (body read, decoded,
    waiting for or in the model); a request beyond it gets 503 at once.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    if min(max_batch, max_inputs, max_pixels, max_concurrent) < 1 or max_upload_mb <= 0 or max_wait_ms < 0:
        raise HeadstartError(
            "max_batch, max_inputs, max_pixels, max_concurrent and max_upload_mb must be positive, max_wait_ms not negative"
        )
    labels = list(model.classes_)
    rule = getattr(model, "decision_", None)  # per-label thresholds: answers carry the labels over them
    task = model.task
    max_bytes = int(max_upload_mb * 1024 * 1024)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-model")

    abstains = getattr(model, "unknown_rule_", None) is not None

    def predict(items: list) -> np.ndarray:
        """Probabilities, with each input's unknown score as one more column when the model
        can answer unknown (the batcher cuts rows, not columns)."""
        if not abstains:
            return np.atleast_2d(model.predict_proba(items))
        probs, scores = model.predict_scored(items)
        return np.hstack([np.atleast_2d(probs), np.asarray(scores, dtype=np.float64).reshape(-1, 1)])

    batcher = Batcher(predict, executor, max_batch, max_wait_ms / 1000.0) if batching else None
    page = _page()
    runtime = getattr(model, "runtime", "pytorch")
    preprocessing = model_preprocessing(model) if task == "image" else None
    in_flight = 0  # prediction requests being worked on; the event loop is one thread, so a plain count

    @asynccontextmanager
    async def lifespan(app):
        yield
        if batcher is not None:
            batcher.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="headstart model server",
        version=__version__,
        description=f"A {task} classifier with {len(labels)} labels, served by headstart ({runtime}).",
        lifespan=lifespan,
    )
    app.state.model, app.state.batcher = model, batcher

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what is served."""
        return {
            "status": "ok", "task": task, "labels": len(labels), "runtime": runtime, "headstart_version": __version__,
            "batching": {"enabled": batching, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                         "model_calls": batcher.batches if batcher else None},
            "limits": {"max_upload_mb": max_upload_mb, "max_inputs": max_inputs, "max_text_chars": max_text_chars,
                       "max_pixels": max_pixels, "max_concurrent": max_concurrent, "in_flight": in_flight},
        }

    @app.get("/labels")
    async def get_labels() -> dict[str, list[str]]:
        """The labels, in the order of the model's outputs."""
        return {"labels": labels}

    async def read_body(request: Request) -> bytes:
        return await read_limited_body(request, max_bytes, max_upload_mb)

    async def parse_form(request: Request, body: bytes):
        # max_part_size bounds each non-file field (a text: up to 4 UTF-8 bytes a character)
        return await parse_multipart(request, body, max_files=max_inputs, max_fields=max_inputs,
                                     max_part_size=max_text_chars * 4 + 1024)

    def check_texts(texts: Sequence[Any]) -> list[str]:
        if not texts:
            raise HTTPException(422, 'no text to classify; send {"text": "..."} or {"texts": ["...", ...]}')
        if len(texts) > max_inputs:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {max_inputs}")
        for i, t in enumerate(texts):
            which = "the text" if len(texts) == 1 else f"text {i + 1} of {len(texts)}"
            if not isinstance(t, str):
                raise HTTPException(422, f"{which} is not a string")
            if not t.strip():
                raise HTTPException(422, f"{which} is empty; there is nothing to classify")
            if len(t) > max_text_chars:
                raise HTTPException(413, f"{which} has {len(t)} characters; the limit is {max_text_chars}")
        return list(texts)

    async def text_inputs(request: Request, media: str, body: bytes) -> tuple[list[str], list[str]]:
        if media == "application/json":
            try:
                data = json.loads(body)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise HTTPException(422, f"the request body is not valid JSON ({exc})") from None
            except RecursionError:
                raise HTTPException(422, "the request body is not valid JSON (nested too deeply)") from None
            if isinstance(data, dict) and isinstance(data.get("texts"), list):
                texts = data["texts"]
            elif isinstance(data, dict) and "text" in data:
                texts = [data["text"]]
            else:
                raise HTTPException(422, 'expected a JSON object {"text": "..."} or {"texts": ["...", ...]}')
        elif media == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qsl

            try:
                fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=max_inputs + 10)
            except (UnicodeDecodeError, ValueError) as exc:
                raise HTTPException(422, f"cannot read the form ({exc})") from None
            texts = [v for k, v in fields if k in ("text", "texts")]
        else:
            form = await parse_form(request, body)
            texts = [v for k, v in form.multi_items() if k in ("text", "texts") and isinstance(v, str)]
        texts = check_texts(texts)
        return texts, texts

    async def image_inputs(request: Request, media: str, body: bytes) -> tuple[list, list[str]]:
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import UploadFile

        from .runtime import ImageTooLarge

        if media != "multipart/form-data":
            raise HTTPException(415, "this model classifies images; POST multipart/form-data with one or more image files")
        form = await parse_form(request, body)
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise HTTPException(422, "no image file in the request; send one or more files as multipart/form-data")
        if len(uploads) > max_inputs:
            raise HTTPException(413, f"{len(uploads)} files in one request; the limit is {max_inputs}")
        images, names = [], []
        for i, upload in enumerate(uploads):
            name = upload.filename or f"file {i + 1}"
            declared = (upload.content_type or "").split(";")[0].strip().lower()
            if declared and not declared.startswith("image/") and declared != "application/octet-stream":
                raise HTTPException(415, f"{name!r} was sent as {declared}; send image files (image/jpeg, image/png, ...)")
            data = await upload.read()
            await upload.close()  # the upload's bytes are not needed again
            if not data:
                raise HTTPException(422, f"{name!r} is empty")
            try:
                images.append(await run_in_threadpool(prepare_image, data, preprocessing, max_pixels))
            except ImageTooLarge as exc:
                raise HTTPException(413, f"{name!r} is too large: {exc}") from None
            except DataError as exc:
                raise HTTPException(422, f"cannot read {name!r}: {exc}") from None
            del data
            names.append(name)
        return images, names

    async def read_inputs(request: Request, media: str) -> tuple[list, list[str]]:
        """The request's inputs (texts, or images cut down to what the model needs) and
        their names; the raw body is dropped once they are read."""
        body = await read_body(request)
        if task == "image":
            return await image_inputs(request, media, body)
        return await text_inputs(request, media, body)

    async def run_model(items: list) -> np.ndarray:
        if batcher is not None:
            return await batcher.submit(items)
        return await asyncio.get_running_loop().run_in_executor(executor, predict, items)

    @app.post("/predict", openapi_extra=_PREDICT_BODY)
    async def predict_endpoint(
        request: Request,
        top_k_: int = Query(top_k, alias="top_k", ge=1, description="How many labels to return per input."),
        unknown: bool = Query(True, description="For a model that can answer unknown: include each input's unknown "
                                                "score and whether it is over the model's threshold (the answer is then "
                                                "unknown); false leaves it out."),
    ) -> dict[str, Any]:
        """Classify uploaded images (multipart/form-data, one or more files) or texts (JSON
        `{"text": ...}` or `{"texts": [...]}`). Returns the top-k labels of each input, and for
        a model that can answer unknown, `unknown`: {score, threshold, fired}."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("multipart/form-data", "application/json", "application/x-www-form-urlencoded"):
            raise HTTPException(
                415, f"content type {media or 'none'!r} is not accepted; send multipart/form-data (images) or application/json (texts)"
            )
        nonlocal in_flight
        if in_flight >= max_concurrent:
            return JSONResponse({"detail": f"the server is busy ({max_concurrent} requests in progress); retry shortly"},
                                status_code=503, headers={"Retry-After": "1"})
        in_flight += 1
        try:
            items, names = await read_inputs(request, media)
            probs = await run_model(items)
        except HTTPException:  # a refusal with its own status and message
            raise
        except HeadstartError as exc:
            raise HTTPException(422, str(exc)) from None
        except Exception:  # noqa: BLE001 - report, keep serving; the details go to the log, never to the client
            request_id = uuid.uuid4().hex[:16]
            log.exception("prediction failed (request id %s)", request_id)
            return JSONResponse({"detail": f"prediction failed; the server log has the details under request id {request_id}"},
                                status_code=500, headers={"X-Request-ID": request_id})
        finally:
            in_flight -= 1
        scores = None
        if abstains:
            probs, scores = probs[:, :-1], probs[:, -1]
        return {"task": task, "results": top_k_results(names, probs, labels, top_k_, rule, scores if unknown else None)}

    return app


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, *, ready=None, **options: Any) -> None:
    """Load the model at ``path`` and serve it with uvicorn until interrupted; ``ready()``
    is called once the model has loaded and the app is built, just before listening."""
    import uvicorn

    model = load_model(path)
    app = create_app(model, **options)
    if ready is not None:
        ready()
    uvicorn.run(app, host=host, port=port, log_level="info")
