"""`skycourier sim --ground`: the ground service watching the simulated flight, as on a fleet.

The sim's drone publishes its telemetry and events through the emulated modem to an MQTT
broker; here the ground web service (`ground.web.app`) runs in this process on uvicorn, its
ingest subscribed to that broker, so the flight reaches the dispatch page's map the way a
real drone's would: through the broker, not by a shortcut. Its store is
``<out>/ground.db`` (SQLite), its secret key ``<out>/ground-secret.key``, so that
``skycourier ground --db sqlite:///<out>/ground.db --secret-file <out>/ground-secret.key``
shows the same flight later, and the tracking link printed now still opens it.

Before the flight (`SimGround.flying`, called by `run_simulation`) the order is recorded in
the ground store as a dispatcher records one before sending it (`Store.create_order`, its
digest the SHA-256 of the signed order's bytes), and the drone's answers are put on the
bus as its order intake would (`OrderAck`, then `OrderUpdate` flying and, after the mission,
done with the outcome): `skycourier sim` has no intake, it flies its one order directly.
Those answers go up as the drone's order events and move the order in the ground store.

The ingest speaks MQTT 5 (shared subscriptions), which the simulator's embedded MQTT 3.1.1
broker does not: without `--broker`, `--ground` needs mosquitto.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shlex
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from companion.bus import Bus
from companion.intake.intake import OrderAck, OrderUpdate
from companion.security.orders import Order as SignedOrder
from sim.harness.devices import own_broker
from sim.mqtt_broker import find_mosquitto

if TYPE_CHECKING:
    from ground.web.background import BackgroundServer
    from ground.web.service import Ground
    from sim.harness.simulate import Order

log = logging.getLogger(__name__)

#: The port the service is offered on when free (`skycourier ground`'s default).
DEFAULT_PORT = 8080
#: The operator account made for a run.
OPERATOR = "sim"
#: Wall seconds the service, and its ingest's subscription, may take to come up.
START_TIMEOUT_S = 30.0
#: Wall seconds the ground store may take, after the flight, to hold the order's end.
SETTLE_TIMEOUT_S = 30.0
#: The ground store's files in the run's folder; a new run starts them afresh.
GROUND_DB = "ground.db"
GROUND_DB_FILES = (GROUND_DB, f"{GROUND_DB}-wal", f"{GROUND_DB}-shm", f"{GROUND_DB}-journal")
SECRET_FILE = "ground-secret.key"


class SimGroundError(Exception):
    """`--ground` cannot run here (the ground extra or an MQTT 5 broker is missing, the port
    is taken, the key file is refused); the message says what and what to do."""


def require_ground() -> None:
    """SimGroundError unless the `ground` extra (FastAPI, SQLAlchemy, uvicorn) imports."""
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        missing = exc.name or "a package"
        raise SimGroundError(
            f"--ground needs the ground extra ({missing} is missing): pip install -e '.[ground]'"
        ) from None


def ground_broker(stack: ExitStack) -> tuple[str, int]:
    """A mosquitto for the run (on 1883 when free), closed with `stack`; SimGroundError
    when mosquitto is not installed (the embedded broker cannot serve the MQTT 5 ingest)."""
    if find_mosquitto() is None:
        raise SimGroundError(
            "--ground needs mosquitto (apt install mosquitto): the ground ingest speaks "
            "MQTT 5, which the embedded broker does not; or give --broker HOST:PORT of an "
            "MQTT 5 broker"
        )
    return own_broker(stack)


def listening_socket(port: int | None) -> socket.socket:
    """A socket bound on 127.0.0.1: `port`, or `DEFAULT_PORT` when free, else any free port
    (bound here and handed to uvicorn, so no other process takes it in between);
    SimGroundError when a port asked for is taken."""
    from ground.web.background import local_socket

    try:
        return local_socket(DEFAULT_PORT if port is None else port)
    except OSError as exc:
        if port is not None:
            raise SimGroundError(f"--ground-port {port}: cannot listen: {exc.strerror}") from None
    return local_socket(0)


def plain_order_digest(order: Order) -> str:
    """The SHA-256 of a delivery flown without a signed order (`--recipient none`): of the
    order's canonical JSON (id and drop), standing in for the signed bytes."""
    body = {"order_id": order.mission_id, "drop": [order.drop_lat, order.drop_lon]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class SimGround:
    """The ground service of one `skycourier sim --ground` run (see the module doc); start
    it with `start_ground`. `say` prints a line for the user."""

    def __init__(
        self,
        out_dir: Path,
        drone_id: str,
        server: BackgroundServer,
        password: str,
        say: Callable[[str], None],
    ) -> None:
        self.out_dir = out_dir
        self.drone_id = drone_id
        self.base_url = server.url
        self.operator = OPERATOR
        self.password = password
        self.order_id: str | None = None
        self.tracking_path: str | None = None
        self._server = server
        self._say = say

    @property
    def service(self) -> Ground:
        return self._server.app.state.ground  # type: ignore[no-any-return]

    @property
    def db_path(self) -> Path:
        return (self.out_dir / GROUND_DB).resolve()

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def secret_file(self) -> Path:
        return (self.out_dir / SECRET_FILE).resolve()

    @property
    def dispatch_url(self) -> str:
        return f"{self.base_url}/dispatch"

    @property
    def tracking_url(self) -> str | None:
        return None if self.tracking_path is None else f"{self.base_url}{self.tracking_path}"

    # -- the flight (run_simulation's order watch) ---------------------------------------------

    def flying(self, bus: Bus, order: Order, signed: SignedOrder | None) -> None:
        """Before take-off: record the order in the ground store, print its tracking link,
        and answer it on the bus as the drone's intake would (accepted, flying)."""
        from ground.store import StoreError

        digest = signed.digest if signed is not None else plain_order_digest(order)
        service = self.service
        try:
            service.store.create_order(order.mission_id, self.drone_id, digest, OPERATOR)
        except StoreError as exc:  # e.g. an order file's id longer than the store keeps
            self._say(
                f"ground: order {order.mission_id!r} not recorded ({exc}); it flies untracked"
            )
            return
        expires = service.clock() + service.config.tracking_ttl_s
        token = service.links.token(order.mission_id, expires)
        service.store.append_audit(OPERATOR, "tracking-link", "order", order.mission_id)
        self.order_id, self.tracking_path = order.mission_id, f"/track/{token}"
        self._say(
            f"ground: order {order.mission_id} recorded; the recipient's tracking page: "
            f"{self.tracking_url}"
        )
        bus.publish(
            OrderAck(True, "accepted", "flown by the simulator", "sim", order.mission_id, digest)
        )
        bus.publish(OrderUpdate(order.mission_id, "flying"))

    def done(self, bus: Bus, order: Order, outcome: str) -> None:
        """After the mission: the order is done with the mission's outcome."""
        bus.publish(OrderUpdate(order.mission_id, "done", outcome))

    def links(self) -> dict[str, Any]:
        """The report's `ground` section: where this flight is seen on the ground service."""
        return {
            "dispatch_url": self.dispatch_url,
            "tracking_url": self.tracking_url,
            "tracking_path": self.tracking_path,
            "order_id": self.order_id,
            "drone_id": self.drone_id,
            "operator": OPERATOR,
            "database": str(self.db_path),
            "secret_file": str(self.secret_file),
        }

    # -- after the flight ----------------------------------------------------------------------

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> str | None:
        """Wait until the ground store holds the order's end (state ``done``) and the ingest
        has stored all it received; None then, else what is missing after `timeout_s`."""
        service = self.service
        deadline = time.monotonic() + timeout_s
        while True:
            missing = self._missing(service)
            if missing is None or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    def _missing(self, service: Ground) -> str | None:
        if self.order_id is None:
            return "the order was not recorded in the ground store"
        order = service.store.order(self.order_id)
        ingest = service.ingestor.stats() if service.ingestor is not None else None
        if order is None or order.state != "done":
            state = "missing" if order is None else f"still {order.state!r}"
            seen = "no ingest" if ingest is None else f"{ingest.stored} records stored"
            return f"order {self.order_id} is {state} in the ground store ({seen})"
        if ingest is not None and ingest.pending:
            return f"the ingest still holds {ingest.pending} messages uncommitted"
        return None

    def later_command(self) -> str:
        """The command that serves this run's store again (the same secret: same links)."""
        return (
            f"skycourier ground --db {shlex.quote(self.db_url)} "
            f"--secret-file {shlex.quote(str(self.secret_file))}"
        )

    def serve_until_interrupted(self) -> None:
        """Keep serving until Ctrl-C (or the server ends by itself)."""
        with suppress(KeyboardInterrupt):
            self._server.wait()

    def stop(self) -> None:
        """Stop uvicorn (the app's lifespan stops the ingest and closes the store)."""
        if not self._server.stop(START_TIMEOUT_S):
            log.warning("ground service: uvicorn did not stop within %g s", START_TIMEOUT_S)


def start_ground(
    stack: ExitStack,
    out_dir: Path,
    broker: tuple[str, int],
    drone_id: str,
    port: int | None,
    say: Callable[[str], None],
) -> SimGround:
    """Start the ground service for a run into `out_dir` on `broker` (its store afresh, its
    secret key kept), with a new operator account; stopped with `stack`. Waits until it
    serves and its ingest is subscribed; SimGroundError when it cannot."""
    from ground.web.app import create_app
    from ground.web.background import BackgroundServer
    from ground.web.config import WebConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in GROUND_DB_FILES:
        (out_dir / name).unlink(missing_ok=True)
    run = uuid.uuid4().hex[:8]
    config = WebConfig(
        db_url=f"sqlite:///{(out_dir / GROUND_DB).resolve()}",
        broker=f"{broker[0]}:{broker[1]}",
        secret_file=(out_dir / SECRET_FILE).resolve(),
        # Its own MQTT session and shared-subscription group, so a run never takes over
        # another instance's session, nor a share of a fleet's telemetry on the same broker.
        ingest_client_id=f"skycourier-sim-ground-{run}",
        ingest_group=f"skycourier-sim-{run}",
    )
    try:
        app = create_app(config)
    except ValueError as exc:  # the key file refused (open to others, not a key)
        raise SimGroundError(str(exc)) from None
    server = BackgroundServer(app, listening_socket(port), "sim-ground-uvicorn")
    password = secrets.token_urlsafe(12)
    ground = SimGround(out_dir, drone_id, server, password, say)
    stack.callback(ground.stop)
    deadline = time.monotonic() + START_TIMEOUT_S
    if not server.start(START_TIMEOUT_S):
        raise SimGroundError("the ground service did not start (see the log above)")
    service = ground.service
    ingestor = service.ingestor
    if ingestor is None or not ingestor.wait_connected(max(0.0, deadline - time.monotonic())):
        why = None if ingestor is None else ingestor.stats().last_error
        raise SimGroundError(
            f"the ground ingest could not subscribe at {broker[0]}:{broker[1]} "
            f"({why or 'no answer'}); it needs an MQTT 5 broker such as mosquitto"
        )
    from ground.web.backend import Accounts

    Accounts(service.store).add(OPERATOR, password)
    service.store.append_audit(OPERATOR, "user-add", "operator", OPERATOR)
    return ground
