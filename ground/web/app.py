"""The ground web service's application factory (FastAPI on uvicorn).

`create_app(config)` opens the store (migrating it to the newest schema), loads or creates the
secret key and, when `WebConfig.broker` names a broker, runs the telemetry ingest
(`ground.ingest.Ingestor`) in this process for the app's lifetime, writing through a
`LiveStore` so that what it stores is pushed to the page's live feed. `serve(config)` runs it
on uvicorn at `WebConfig.bind`:`WebConfig.port` (127.0.0.1 unless told otherwise).

Every response carries a Content-Security-Policy that allows only this origin's scripts,
styles and connections (and images from the configured tile server), no framing, and no
referrer (a tracking link's token never leaks through one). Swagger's pages are off (they
load scripts from a CDN); the API is described at ``/openapi.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from ground.store import Store
from ground.web import api, pages
from ground.web.backend import LiveStore
from ground.web.config import WebConfig, load_secret
from ground.web.service import Ground

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def _csp(config: WebConfig) -> str:
    images = " ".join(filter(None, ["'self'", "data:", config.tile_origin]))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _broker(text: str) -> tuple[str, int]:
    from ground.ingest import parse_broker

    return parse_broker(text)


def create_app(
    config: WebConfig,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The service on `store` (default: `LiveStore.open(config.db_url)`, closed with the
    app). Errors in the configuration (database URL, broker, key file) raise here, before
    anything is served."""
    host_port = _broker(config.broker) if config.broker else None
    secret = load_secret(config.secret_file)
    owned = store is None
    the_store = LiveStore.open(config.db_url, clock) if store is None else store
    service = Ground(config, the_store, secret, clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if host_port is not None:
            from ground.ingest import IngestConfig, Ingestor

            ingest = IngestConfig(
                client_id=config.ingest_client_id, host=host_port[0], port=host_port[1]
            )
            service.ingestor = Ingestor(the_store, ingest, clock)
            service.ingestor.start()
            log.info("ingest from %s:%d started", *host_port)
        try:
            yield
        finally:
            if service.ingestor is not None:
                service.ingestor.stop()
                service.ingestor = None
            if owned:
                the_store.close()

    app = FastAPI(
        title="SkyCourier ground",
        summary="Dispatch and live tracking of a SkyCourier fleet.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ground = service
    csp = _csp(config)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if response.media_type in (None, "text/html") or request.url.path.startswith("/api"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.include_router(pages.router)
    app.include_router(api.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(config: WebConfig) -> None:
    """Run the service on uvicorn until interrupted."""
    import uvicorn

    app = create_app(config)
    # Open live streams never end by themselves: give them a few seconds at shutdown.
    uvicorn.run(
        app,
        host=config.bind,
        port=config.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
