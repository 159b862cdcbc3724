"""The ground web service's application factory (FastAPI on uvicorn).

`create_app(config)` opens the store (migrating it to the newest schema), loads or creates the
secret key and, when `WebConfig.broker` names a broker, runs the telemetry ingest
(`ground.ingest.Ingestor`) in this process for the app's lifetime, and feeds the page's live
feed from a subscription of its own that sees the whole fleet (`ground.web.live_fleet`;
without a broker, what the store takes in is pushed instead). `serve(config)` runs it
on uvicorn at `WebConfig.bind`:`WebConfig.port` (127.0.0.1 unless told otherwise). With
`WebConfig.dispatcher_keys` too, the page and the API send signed orders and operator
commands (`ground.dispatch`) through an MQTT client of their own.

Every response carries a Content-Security-Policy that allows only this origin's scripts,
styles and connections (and images from the configured tile server), no framing, and no
referrer (a tracking link's token never leaks through one). Swagger's pages are off (they
load scripts from a CDN); the API is described at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ground.dispatch import Dispatcher
from ground.store import Store
from ground.web import api, pages
from ground.web.backend import LiveStore
from ground.web.config import BrokerLogin, WebConfig, broker_login, load_secret
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


#: How often an instance takes in drones registered elsewhere (the CLI, another instance).
REGISTRY_REFRESH_S = 10.0


async def _follow_registrations(service: Ground) -> None:
    """With `registered_only`, keep the ingest's allow-list the registered drones."""
    while True:
        await asyncio.sleep(REGISTRY_REFRESH_S)
        try:
            await run_in_threadpool(service.refresh_allowed)
        except Exception:  # the database away for a moment: the old list stands
            log.exception("could not read the registered drones")


def _dispatcher_key(keys: Path) -> Ed25519PrivateKey:
    from companion.security.keys import KeyStore

    return KeyStore(keys.expanduser()).dispatcher_signing_key()


def _start_dispatch(
    config: WebConfig,
    host_port: tuple[str, int],
    login: BrokerLogin,
    store: Store,
    key: Ed25519PrivateKey,
) -> Dispatcher:
    """The dispatcher, sending through its own MQTT client (its session name is the ingest's
    with ``-dispatch``)."""
    from ground.publisher import MqttPublisher

    publisher = MqttPublisher(
        *host_port,
        client_id=f"{config.ingest_client_id}-dispatch",
        username=login.username,
        password=login.password,
        tls=login.tls,
    )
    publisher.start()
    return Dispatcher(store, key, publisher, store.clock)


def create_app(
    config: WebConfig,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The service on `store` (default: `LiveStore.open(config.db_url)`, closed with the
    app). Errors in the configuration (database URL, broker, key files) raise here, before
    anything is served."""
    host_port = _broker(config.broker) if config.broker else None
    secret = load_secret(config.secret_file)
    owned = store is None
    signing_key = _dispatcher_key(config.dispatcher_keys) if config.dispatcher_keys else None
    login = broker_login(config)
    the_store = LiveStore.open(config.db_url, clock) if store is None else store
    service = Ground(config, the_store, secret, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.live = None
        if host_port is not None:
            from ground.ingest import IngestConfig, Ingestor
            from ground.web.live_fleet import feed_hub_from_broker

            ingest = IngestConfig(
                client_id=config.ingest_client_id,
                host=host_port[0],
                port=host_port[1],
                group=config.ingest_group,
                username=login.username,
                password=login.password,
                tls=login.tls,
                allowed_drones=(
                    frozenset(the_store.registered_drones()) if config.registered_only else None
                ),
            )
            # The page sees the whole fleet, not this instance's share (`live_fleet`).
            app.state.live = feed_hub_from_broker(service.hub, the_store, ingest, clock)
            service.ingestor = Ingestor(the_store, ingest, clock)
            service.decoders = [service.ingestor.decoder, app.state.live.feed.decoder]
            service.ingestor.start()
            log.info("ingest from %s:%d started", *host_port)
            if signing_key is not None:
                service.dispatcher = _start_dispatch(
                    config, host_port, login, the_store, signing_key
                )
        refresh = (
            asyncio.create_task(_follow_registrations(service)) if config.registered_only else None
        )
        try:
            yield
        finally:
            if refresh is not None:
                refresh.cancel()
            if service.dispatcher is not None:
                service.dispatcher.publisher.stop()
                service.dispatcher = None
            if app.state.live is not None:
                app.state.live.stop()
                app.state.live = None
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
