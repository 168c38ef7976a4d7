"""Run the app under uvicorn with a graceful shutdown.

The first SIGTERM (or Ctrl-C) starts draining: new requests get 503, requests already
accepted run to the end, then the server stops. A second signal stops it at once.
The model loads on the worker thread while the server already answers (503 until it
is ready); if loading fails, the server stops with the error.
"""

from __future__ import annotations

import logging
import signal

import uvicorn

from .app import Service, ServeSettings, create_app
from .worker import Loaded, Worker

log = logging.getLogger("glass.serve")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame) -> None:
        if self.service.draining:  # second signal: stop now
            self.should_exit = self.force_exit = True
            return
        log.warning("received %s: finishing the requests in flight, refusing new ones", signal.Signals(sig).name)
        self.service.draining = True

    async def on_tick(self, counter: int) -> bool:
        worker = self.service.worker
        if self.service.draining and worker.idle:
            self.should_exit = True
        if worker.state == "failed":
            self.should_exit = True
        return await super().on_tick(counter)


def serve(load, settings: ServeSettings, host: str, port: int, max_batch: int, share_batch: bool,
          batch_wait: float = 0.01, log_level: str = "info") -> Worker:
    """Serve until a signal; returns the worker (its ``state``/``error`` tell how it ended)."""
    worker = Worker(load, max_batch=max_batch, share_batch=share_batch, batch_wait=batch_wait)
    app, service = create_app(worker, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=None)
    server = GracefulServer(config, service)
    worker.start()
    try:
        server.run()
    finally:
        worker.stop(timeout=5)
    return worker


__all__ = ["GracefulServer", "Loaded", "serve"]
