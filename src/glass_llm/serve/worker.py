"""The single thread that owns the model: it loads it, then takes requests from a
queue and runs them in batches.

Requests that wait together and have the same batch key (sampling settings and GLASS
settings) run as one left-padded batch of up to ``max_batch`` rows; the rest wait for
the next round, oldest first. Results travel back to the asyncio event loop through
``loop.call_soon_threadsafe``, so the loop never waits on the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ..runner import is_user_error
from .decode import KeptGlass, Row, eos_token_ids, run_batch
from .protocol import GenerationRequest

log = logging.getLogger("glass.serve")


class Unavailable(Exception):
    """The worker cannot take requests (loading, failed or stopping)."""


class Job:
    """One request on its way through the worker; events arrive on ``events``."""

    def __init__(self, req: GenerationRequest, loop: asyncio.AbstractEventLoop):
        self.req, self.loop = req, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False

    def emit(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    prior: Any
    context_length: int


class Worker:
    def __init__(self, load: Callable[[], Loaded], max_batch: int = 8, share_batch: bool = False,
                 batch_wait: float = 0.01):
        self._load = load
        self.max_batch, self.share_batch, self.batch_wait = max_batch, share_batch, batch_wait
        self.state = "loading"  # loading -> ready -> stopped, or failed
        self.error: str | None = None
        self.loaded: Loaded | None = None
        self._queue: queue.Queue = queue.Queue()
        self._backlog: deque[Job] = deque()
        self._active = 0  # jobs submitted and not yet finished
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="glass-model", daemon=True)
        self.ready = threading.Event()  # set once loading has ended, well or badly

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet finished by the model thread."""
        with self._lock:
            return self._active

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def submit(self, job: Job) -> None:
        if self.state != "ready":
            raise Unavailable(self.error or f"the model is {self.state}")
        if job.req.n > self.max_batch:
            raise ValueError(f"n={job.req.n} is larger than the server's --max-batch {self.max_batch}")
        with self._lock:
            self._active += 1
        self._queue.put(job)

    # the model thread ----------------------------------------------------------
    def _run(self) -> None:
        try:
            self.loaded = self._load()
            self.eos_ids = eos_token_ids(self.loaded.model, self.loaded.tokenizer)
            self._kept = KeptGlass(self.loaded.model, self.loaded.prior)  # compact buffers reused between batches
            self.state = "ready"
        except Exception as err:  # reported by /health and by the command
            self.error, self.state = f"loading the model failed: {err}", "failed"
            if not is_user_error(err):
                log.exception("loading the model failed")
        finally:
            self.ready.set()
        while self.state == "ready":
            batch = self._next_batch()
            if batch is None:
                break
            if batch:
                self._execute(batch)
        if self.loaded is not None and self.state == "ready":
            self._kept.close()
        self.state = "stopped" if self.state == "ready" else self.state

    def _next_batch(self) -> list[Job] | None:
        """Oldest waiting job plus every waiting job that can share its batch; None to stop."""
        wait = 0.0
        if not self._backlog:
            first = self._queue.get()
            if first is None:
                return None
            self._backlog.append(first)
            wait = self.batch_wait  # requests sent together arrive a little apart: gather until quiet
        give_up = time.monotonic() + 5 * wait
        while True:
            full = sum(job.req.n for job in self._backlog) >= self.max_batch
            try:
                job = self._queue.get(timeout=wait) if wait and not full and time.monotonic() < give_up \
                    else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after what is already waiting
                break
            self._backlog.append(job)
        head = self._backlog[0].req.batch_key()
        batch, rows, rest = [], 0, deque()
        for job in self._backlog:
            if job.cancelled:  # its client left while it waited
                for i in range(job.req.n):
                    job.emit(("done", i, "cancelled", 0))
                self._finished(job)
            elif job.req.batch_key() == head and rows + job.req.n <= self.max_batch:
                batch.append(job)
                rows += job.req.n
            else:
                rest.append(job)
        self._backlog = rest
        return batch

    def _finished(self, job: Job) -> None:
        with self._lock:
            self._active -= 1

    def _execute(self, batch: list[Job]) -> None:
        loaded = self.loaded
        prompts, rows = [], []
        for job in batch:
            for i in range(job.req.n):
                prompts.append(job.req.prompt_ids)
                rows.append(Row(index=i, max_tokens=job.req.max_tokens, stop=job.req.stop, emit=job.emit,
                                cancelled=lambda job=job: job.cancelled))
        req = batch[0].req
        try:
            run_batch(loaded.model, loaded.tokenizer, prompts, rows, req.sampling,
                      req.glass.config(share_batch=self.share_batch), prior=loaded.prior, eos_ids=self.eos_ids,
                      kept=self._kept)
        except Exception as err:  # one bad batch must not take the server down
            log.exception("generation failed")
            for job in batch:
                job.emit(("error", f"generation failed: {type(err).__name__}: {err}"))
        finally:
            for job in batch:
                self._finished(job)
