"""Ground stations on the daemon's autopilot link (`[gcs]`): the configured endpoints, each
command endpoint's own signing key, and the router (`firmware_bridge.router_io`) started
for them once the link is up.

An endpoint that cannot run (its key file missing, readable by others or corrupt; a command
endpoint while the link runs unsigned; a port in use) is left out with the reason in the log
and in `skycourier status`; the others, and the rest of the daemon, run on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from companion.config import Config, GcsEndpointConfig
from companion.security.keys import MAVLINK_SECRET_BYTES, KeyFileError, read_key_file
from firmware_bridge.router import EndpointPolicy, Filter, Framing, RouterError
from firmware_bridge.router_io import FlightControllerLink, Route, RouterService, parse_route_url

log = logging.getLogger(__name__)

#: What `skycourier status` shows under "gcs": per endpoint, see `RouterService.status`.
GcsStatus = Callable[[], dict[str, dict[str, Any]]]


def load_endpoint_key(path: Path) -> bytes:
    """A ground station's own 32-byte signing key from `path`: hexadecimal, in a file only
    its owner can read, like the key store's (the same reader and checks). KeyFileError
    names the file and what is wrong, never what it holds."""
    text = read_key_file(path, private=True).strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(
            path, "corrupt: not hexadecimal (64 hex digits, e.g. from `openssl rand -hex 32`)"
        ) from None
    if len(key) != MAVLINK_SECRET_BYTES:
        raise KeyFileError(
            path, f"{len(key)} bytes; a MAVLink signing key is {MAVLINK_SECRET_BYTES}"
        )
    return key


def _policy(endpoint: GcsEndpointConfig, framing: Framing) -> EndpointPolicy:
    return EndpointPolicy(
        endpoint.name,
        endpoint.mode,
        None if endpoint.key_file is None else load_endpoint_key(endpoint.key_file),
        Filter(frozenset(endpoint.allow_out), frozenset(endpoint.deny_out)),
        Filter(frozenset(endpoint.allow_in), frozenset(endpoint.deny_in)),
        endpoint.rate_hz,
        framing,
    )


def start_gcs(
    config: Config,
    link: FlightControllerLink,
    signing_secret: bytes | None,
    running: ExitStack,
) -> GcsStatus | None:
    """Route the autopilot's stream to `config.gcs`'s endpoints and their commands back
    (the router stopped by `running`); None when none is configured. `signing_secret` is
    the one the link signs with (None: unsigned, and command endpoints are refused)."""
    endpoints = config.gcs.endpoints
    if not endpoints:
        return None
    routes = []
    refused: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        url = parse_route_url(endpoint.url)
        try:
            routes.append(Route(url, _policy(endpoint, url.framing)))
        except (KeyFileError, RouterError) as exc:
            log.error("ground endpoint %s (%s) not started: %s", endpoint.name, url, exc)
            refused[endpoint.name] = {"url": str(url), "mode": endpoint.mode,
                                      "state": f"not started: {exc}", "peer": None,
                                      "out": {}, "in": {}}  # fmt: skip
    service = RouterService(
        link,
        routes,
        fc_secret=signing_secret,
        vehicle_systems={config.vehicle.target_system, config.companion.system_id},
    )
    service.start()
    running.callback(service.stop)
    return lambda: {**refused, **service.status()}
