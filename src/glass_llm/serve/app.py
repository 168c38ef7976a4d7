"""HTTP routes: /v1/chat/completions, /v1/completions, /v1/models and /health.

Handlers only parse, tokenize and wait on events from the model thread; every
refusal is an OpenAI-style error body, and an unexpected failure is a 500 with a
one-line message (the traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .protocol import GenerationRequest, GlassSettings, RequestError, encode, parse_json, parse_request
from .responses import Reply, error_body, glass_info, sse
from .worker import Job, Unavailable, Worker

log = logging.getLogger("glass.serve")


@dataclass
class ServeSettings:
    model_name: str
    glass: GlassSettings
    max_tokens: int = 256  # when a request does not say
    max_body: int = 4 << 20  # bytes


class GenerationFailed(Exception):
    """The model thread reported an error for this request."""


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status)


class EventStream:
    """An ASGI response that sends a request's chunks as server-sent events and
    cancels the request when the client goes away."""

    def __init__(self, job: Job, reply: Reply):
        self.job, self.reply = job, reply

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                    (b"cache-control", b"no-cache")]})
            async for data in self._events():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client disconnected
            pass
        finally:
            self.job.cancel()
            watcher.cancel()

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.job.cancel()

    async def _events(self):
        req, reply = self.job.req, self.reply
        if req.kind == "chat":
            for i in range(req.n):
                yield sse(reply.chunk(i, role=True))
        pending, completion = req.n, 0
        while pending:
            event = await self.job.events.get()
            if event[0] == "error":
                yield sse(error_body(event[1], "server_error"))
                yield sse("[DONE]")
                return
            if event[0] == "delta":
                yield sse(reply.chunk(event[1], text=event[2]))
                continue
            _, index, reason, n_tokens = event
            if reason == "cancelled":
                return
            pending -= 1
            completion += n_tokens
            yield sse(reply.chunk(index, reason=reason))
        if req.include_usage:
            yield sse(reply.usage_chunk(Reply.usage(len(req.prompt_ids), completion)))
        yield sse("[DONE]")


class Service:
    def __init__(self, worker: Worker, settings: ServeSettings):
        self.worker, self.settings = worker, settings
        self.draining = False
        self.created = int(time.time())

    # routes ------------------------------------------------------------------------
    async def health(self, request: Request) -> JSONResponse:
        state = "stopping" if self.draining else self.worker.state
        body = {"status": "ok" if state == "ready" else state, "model": self.settings.model_name,
                "requests_in_flight": self.worker.in_flight}
        if self.worker.error:
            body["error"] = self.worker.error
        return JSONResponse(body, status_code=200 if state == "ready" else 503)

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": self.settings.model_name, "object": "model", "created": self.created, "owned_by": "glass-llm"}]})

    async def chat(self, request: Request):
        return await self._generate(request, "chat")

    async def completions(self, request: Request):
        return await self._generate(request, "completion")

    # generation --------------------------------------------------------------------
    def _check_available(self) -> None:
        if self.draining:
            raise RequestError("the server is shutting down; retry on another instance", status=503,
                               type_="service_unavailable", code="shutting_down")
        if self.worker.state != "ready":
            message = self.worker.error or "the model is still loading; retry in a few seconds"
            raise RequestError(message, status=503, type_="service_unavailable", code=f"model_{self.worker.state}")

    async def _read(self, request: Request, kind: str) -> GenerationRequest:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.settings.max_body:
            raise RequestError(f"the request body is larger than {self.settings.max_body} bytes", status=413)
        raw = await request.body()
        if len(raw) > self.settings.max_body:
            raise RequestError(f"the request body is larger than {self.settings.max_body} bytes", status=413)
        loaded = self.worker.loaded
        req = parse_request(kind, parse_json(raw), self.settings.glass, loaded.prior is not None,
                            self.worker.max_batch)
        encode(loaded.tokenizer, req, loaded.context_length, self.settings.max_tokens)
        return req

    async def _generate(self, request: Request, kind: str):
        try:
            self._check_available()
            req = await self._read(request, kind)
            reply = Reply(kind, self.settings.model_name,
                          glass_info(req.glass.config(share_batch=self.worker.share_batch)))
            job = Job(req, asyncio.get_running_loop())
            self.worker.submit(job)
        except RequestError as err:
            return error_response(err)
        except Unavailable as err:
            return error_response(RequestError(str(err), status=503, type_="service_unavailable"))
        if req.stream:
            return EventStream(job, reply)
        watcher = asyncio.ensure_future(self._watch(request, job))
        try:
            return JSONResponse(await self._collect(job, reply))
        except GenerationFailed as err:
            return error_response(RequestError(str(err), status=500, type_="server_error"))
        finally:
            watcher.cancel()

    @staticmethod
    async def _watch(request: Request, job: Job) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    @staticmethod
    async def _collect(job: Job, reply: Reply) -> dict:
        n = job.req.n
        texts, reasons, completion, pending = [""] * n, [None] * n, 0, n
        while pending:
            event = await job.events.get()
            if event[0] == "error":
                raise GenerationFailed(event[1])
            if event[0] == "delta":
                texts[event[1]] += event[2]
            else:
                _, index, reasons[index], n_tokens = event
                completion += n_tokens
                pending -= 1
        return reply.full(texts, reasons, Reply.usage(len(job.req.prompt_ids), completion))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "server_error",
                                   code=str(exc.status_code)), status_code=exc.status_code)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal server error; see the server log", "server_error"), status_code=500)


def create_app(worker: Worker, settings: ServeSettings) -> tuple[Starlette, Service]:
    service = Service(worker, settings)
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
    return app, service
