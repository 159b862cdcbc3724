"""The router's endpoints on real sockets (`firmware_bridge.router_io`).

Against the built-in vehicle through the real, signed link: a pymavlink ground station on a
UDP endpoint gets the autopilot's HEARTBEAT and GLOBAL_POSITION_INT; a command endpoint that
signs with its own key sets a parameter and gets the PARAM_VALUE back, while the same request
unsigned, signed with a wrong key (the drone's among them), replayed, or sent to a read-only
endpoint never reaches the vehicle: that is read from the vehicle's own parameters, after a
later signed request through the same socket has taken effect. Deny filters and rate limits
hold end to end within loose bounds (the exact counts are tests/test_router.py's, in
simulated time). With a stand-in link: a ground station that stops reading never holds up
the link's reader thread, TCP endpoints connect, reconnect and take over, and endpoints that
cannot run are named with the reason while the others run.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.dialect import MAVLinkMessage, mavlink, mavutil
from firmware_bridge.router import COMMAND, EndpointPolicy, Filter
from firmware_bridge.router_io import (
    MAX_QUEUED,
    Route,
    RouterService,
    RouteUrl,
    RouteUrlError,
    parse_route_url,
)
from firmware_bridge.signing import signature_valid, signing_timestamp
from firmware_bridge.vehicle import Vehicle
from sim.sitl import SitlProcess
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S, SITL_SKIP, sitl_binary
from tests.waiting import wait_until

C = mavlink
DRONE = bytes(range(1, 33))
GCS_KEY = bytes(range(40, 72))
OTHER = bytes(range(101, 133))


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def decode(data: bytes) -> list[MAVLinkMessage]:
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    return [m for m in parser.parse_buffer(data) or [] if m.get_type() != "BAD_DATA"]


class Gcs:
    """A pymavlink ground station (system 255) on a UDP socket or a TCP connection; signs
    with `secret` (None: unsigned)."""

    def __init__(self, secret: bytes | None = None, sock: socket.socket | None = None) -> None:
        self.mav = mavlink.MAVLink(None, srcSystem=255, srcComponent=190)
        if secret is not None:
            self.mav.signing.secret_key = secret
            self.mav.signing.sign_outgoing = True
            self.mav.signing.timestamp = signing_timestamp(time.time())
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.sock.settimeout(0.2)
        self.stream = mavlink.MAVLink(None)
        self.stream.robust_parsing = True

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def frame(self, msg: MAVLinkMessage) -> bytes:
        data = bytes(msg.pack(self.mav))
        self.mav.seq = (self.mav.seq + 1) % 256
        return data

    def send(self, data: bytes | MAVLinkMessage, port: int | None = None) -> None:
        raw = data if isinstance(data, bytes) else self.frame(data)
        if port is None:
            self.sock.sendall(raw)
        else:
            self.sock.sendto(raw, ("127.0.0.1", port))

    def receive(self) -> list[MAVLinkMessage]:
        try:
            data = self.sock.recv(65535)
        except TimeoutError:
            return []
        if self.sock.type == socket.SOCK_STREAM:
            return [m for m in self.stream.parse_buffer(data) or [] if m.get_type() != "BAD_DATA"]
        return decode(data)

    def wait_for(
        self, wanted: Callable[[MAVLinkMessage], bool], what: str, within_s: float = 20.0
    ) -> MAVLinkMessage:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for msg in self.receive():
                if wanted(msg):
                    return msg
        raise AssertionError(f"{what} did not arrive within {within_s} s")

    def close(self) -> None:
        self.sock.close()


def param_set(name: str, value: float) -> MAVLinkMessage:
    return C.MAVLink_param_set_message(1, 1, name.encode(), value, C.MAV_PARAM_TYPE_REAL32)


def param_value(name: str, value: float) -> Callable[[MAVLinkMessage], bool]:
    return lambda m: m.get_type() == "PARAM_VALUE" and m.param_id == name and m.param_value == value


def route(kind: str, port: int, name: str, **policy: Any) -> Route:
    url = RouteUrl(kind, "127.0.0.1", port)  # type: ignore[arg-type]
    return Route(url, EndpointPolicy(name, framing=url.framing, **policy))


def command_route(kind: str, port: int, name: str = "ops", **policy: Any) -> Route:
    return route(kind, port, name, mode=COMMAND, secret=GCS_KEY, **policy)


@pytest.fixture
def flying() -> Iterator[tuple[VehicleServer, Vehicle]]:
    """The built-in vehicle and the companion's link to it, signed with the drone's key."""
    with VehicleServer(DEFAULT_HOME, speedup=1.0, port=0) as server:
        vehicle = Vehicle.connect(f"tcp:127.0.0.1:{server.port}", signing_secret=DRONE,
                                  heartbeat_interval_s=HEARTBEAT_S)  # fmt: skip
        try:
            yield server, vehicle
        finally:
            vehicle.close()


@contextlib.contextmanager
def routing(link: Any, *routes: Route, fc_secret: bytes | None = DRONE) -> Iterator[RouterService]:
    service = RouterService(link, routes, fc_secret=fc_secret, vehicle_systems={1})
    assert service.start() == {}
    try:
        yield service
    finally:
        service.stop()


def counts(service: RouterService, name: str, way: str) -> dict[str, int]:
    return dict(service.status()[name][way])


# ---- against the built-in vehicle -----------------------------------------------------------
def test_a_ground_station_on_udp_gets_the_autopilots_heartbeat_and_position(
    flying: tuple[VehicleServer, Vehicle],
) -> None:
    _server, vehicle = flying
    gcs = Gcs()
    with routing(vehicle.link, route("udp-out", gcs.port, "qgc")) as service:
        beat = gcs.wait_for(lambda m: m.get_type() == "HEARTBEAT", "the autopilot's HEARTBEAT")
        pos = gcs.wait_for(
            lambda m: m.get_type() == "GLOBAL_POSITION_INT" and m.lat != 0, "a position fix"
        )
        assert (beat.get_srcSystem(), beat.get_srcComponent()) == (1, 1)
        assert beat.autopilot == C.MAV_AUTOPILOT_ARDUPILOTMEGA
        assert abs(pos.lat / 1e7 - DEFAULT_HOME[0]) < 1e-3
        # As received: signed by the autopilot with the drone's key.
        assert signature_valid(DRONE, beat) and signature_valid(DRONE, pos)
        assert counts(service, "qgc", "out")["sent"] > 0
    gcs.close()


def test_only_a_signed_command_reaches_the_vehicle(flying: tuple[VehicleServer, Vehicle]) -> None:
    server, vehicle = flying
    ops_port, view_port = free_port(), free_port()
    ops, hostile = Gcs(GCS_KEY), Gcs()
    routes = (command_route("udp-in", ops_port), route("udp-in", view_port, "view"))
    with routing(vehicle.link, *routes) as service:
        first = ops.frame(param_set("RTL_ALT_FINAL", 11.0))
        ops.send(first, ops_port)
        reply = ops.wait_for(param_value("RTL_ALT_FINAL", 11.0), "PARAM_VALUE for the command")
        assert signature_valid(GCS_KEY, reply)  # signed for the ground station, with its key
        assert server.param("RTL_ALT_FINAL") == 11.0
        ops.send(param_set("RTL_ALT_FINAL", 12.0), ops_port)
        ops.wait_for(param_value("RTL_ALT_FINAL", 12.0), "PARAM_VALUE 12")

        hostile.send(param_set("PLDP_DELAY", 9.0), ops_port)  # unsigned
        for key in (OTHER, DRONE):  # a wrong key, and the drone's own
            hostile.send(Gcs(key).frame(param_set("PLDP_DELAY", 9.0)), ops_port)
        hostile.send(first, ops_port)  # a recorded frame, played again: RTL_ALT_FINAL back to 11
        ops.send(param_set("RTL_CLIMB_MIN", 5.0), ops_port)  # after them, on the same socket
        ops.wait_for(param_value("RTL_CLIMB_MIN", 5.0), "the later signed command's answer")
        wait_until(lambda: server.param("RTL_CLIMB_MIN") == 5.0, "the later command applied")
        assert server.param("PLDP_DELAY") == 0.0
        assert server.param("RTL_ALT_FINAL") == 12.0
        dropped = counts(service, "ops", "in")
        assert dropped["unsigned"] == 1 and dropped["bad-signature"] == 2
        assert dropped["replay"] == 1 and dropped["forwarded"] == 3

        # A read-only endpoint: even a frame signed with the right key goes nowhere, yet the
        # sender is answered with the stream from then on.
        viewer = Gcs(GCS_KEY)
        viewer.send(param_set("PLDP_DELAY", 9.0), view_port)
        wait_until(lambda: counts(service, "view", "in").get("read-only") == 1, "the drop")
        viewer.wait_for(lambda m: m.get_type() == "HEARTBEAT", "the stream on the viewer")
        ops.send(param_set("RTL_CLIMB_MIN", 6.0), ops_port)
        wait_until(lambda: server.param("RTL_CLIMB_MIN") == 6.0, "the marker command applied")
        assert server.param("PLDP_DELAY") == 0.0
        assert service.status()["view"]["peer"] == f"127.0.0.1:{viewer.port}"
        # What reached the vehicle was all signed with the drone's key and accepted.
        assert server.signing_rejected == {}
    for gcs in (ops, hostile, viewer):
        gcs.close()


def test_a_deny_filter_and_a_rate_limit_hold_end_to_end(
    flying: tuple[VehicleServer, Vehicle],
) -> None:
    _server, vehicle = flying
    gcs = Gcs()
    lte = route("udp-out", gcs.port, "lte", rate_hz=5.0,
                out_filter=Filter(deny=frozenset({"GLOBAL_POSITION_INT"})))  # fmt: skip
    started = time.monotonic()
    with routing(vehicle.link, lte) as service:
        got: list[str] = []
        dropped: dict[str, int] = {}
        # At least 3 s, and until both drops have happened (a loaded machine slows the
        # simulated vehicle's stream); at most 60 s.
        while time.monotonic() - started < 60.0 and (
            time.monotonic() - started < 3.0 or not {"filtered", "rate-limited"} <= set(dropped)
        ):
            got += [m.get_type() for m in gcs.receive()]
            dropped = counts(service, "lte", "out")
        got += [m.get_type() for m in gcs.receive()]
        elapsed = time.monotonic() - started
    assert "GLOBAL_POSITION_INT" not in got and "HEARTBEAT" in got
    others = [kind for kind in got if kind != "HEARTBEAT"]
    assert len(others) <= 5 + 5.0 * elapsed  # the burst, then the rate: never more
    assert dropped["filtered"] > 0 and dropped["rate-limited"] > 0
    gcs.close()


def test_tcp_endpoints_carry_the_stream_and_signed_commands(
    flying: tuple[VehicleServer, Vehicle],
) -> None:
    server, vehicle = flying
    view_port = free_port(socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as ground:  # the ground station listens
        routes = (route("tcp-in", view_port, "view"),
                  command_route("tcp-out", ground.getsockname()[1]))  # fmt: skip
        with routing(vehicle.link, *routes) as service:
            ground.settimeout(20)
            conn, _ = ground.accept()
            ops = Gcs(GCS_KEY, conn)
            ops.send(param_set("RTL_ALT_FINAL", 21.0))
            reply = ops.wait_for(param_value("RTL_ALT_FINAL", 21.0), "PARAM_VALUE over TCP")
            assert signature_valid(GCS_KEY, reply)
            assert server.param("RTL_ALT_FINAL") == 21.0
            viewer = Gcs(None, socket.create_connection(("127.0.0.1", view_port), timeout=5))
            viewer.wait_for(lambda m: m.get_type() == "HEARTBEAT", "a HEARTBEAT over tcp-in")
            assert counts(service, "ops", "in")["forwarded"] == 1
            viewer.close()
            ops.close()


# ---- with a stand-in link -------------------------------------------------------------------
class FakeLink:
    """The link's two faces the router uses: listeners called with the autopilot's messages,
    and frames sent to it (kept here)."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[MAVLinkMessage], None]] = []
        self.sent: queue.Queue[bytes] = queue.Queue()

    def add_listener(self, listener: Callable[[MAVLinkMessage], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def send_frame(self, frame: bytes) -> None:
        self.sent.put(frame)

    def deliver(self, msg: MAVLinkMessage) -> None:
        for listener in list(self.listeners):
            listener(msg)


def from_autopilot(msg: MAVLinkMessage) -> MAVLinkMessage:
    (decoded,) = decode(bytes(msg.pack(mavlink.MAVLink(None, srcSystem=1, srcComponent=1))))
    return decoded


HEARTBEAT = from_autopilot(C.MAVLink_heartbeat_message(2, 3, 0, 0, 4, 3))
TEXT = from_autopilot(C.MAVLink_statustext_message(6, b"x" * 50))


def test_a_ground_station_that_stops_reading_never_holds_up_the_link() -> None:
    link = FakeLink()
    udp = Gcs()
    tcp_port = free_port(socket.SOCK_STREAM)
    routes = (route("tcp-in", tcp_port, "stuck"), route("udp-out", udp.port, "fine"))
    with routing(link, *routes, fc_secret=None) as service:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", tcp_port))  # and never reads
        wait_until(lambda: service.status()["stuck"]["peer"] is not None, "the connection")
        done = threading.Event()

        def flood() -> None:
            for _ in range(20 * MAX_QUEUED):  # about 1.2 MB for the stuck one
                link.deliver(TEXT)
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(120), "the link's reader thread was held up by a stuck endpoint"
        wait_until(lambda: counts(service, "stuck", "out").get("queue-full", 0) > 0,
                   "frames for the stuck endpoint dropped")  # fmt: skip

        def fine() -> dict[str, int]:
            return counts(service, "fine", "out")

        wait_until(lambda: sum(fine().values()) == 20 * MAX_QUEUED, "the flood sent or dropped")
        assert fine()["sent"] >= MAX_QUEUED  # the healthy endpoint kept sending meanwhile
        while udp.receive():  # what its socket could hold of the flood
            pass
        link.deliver(HEARTBEAT)
        udp.wait_for(lambda m: m.get_type() == "HEARTBEAT", "a frame on the healthy endpoint")
        stuck.close()
    udp.close()


def test_tcp_out_reconnects_and_tcp_in_takes_the_newest_client() -> None:
    link = FakeLink()
    view_port = free_port(socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as ground:
        ground.settimeout(20)
        routes = (route("tcp-out", ground.getsockname()[1], "out"),
                  route("tcp-in", view_port, "in"))  # fmt: skip
        with routing(link, *routes, fc_secret=None) as service:
            conn, _ = ground.accept()
            conn.close()  # the ground station goes away
            conn, _ = ground.accept()  # and the router comes back
            again = Gcs(None, conn)
            first = Gcs(None, socket.create_connection(("127.0.0.1", view_port), timeout=5))
            wait_until(lambda: service.status()["in"]["peer"] is not None, "the first client")
            second = Gcs(None, socket.create_connection(("127.0.0.1", view_port), timeout=5))
            newest = f"127.0.0.1:{second.sock.getsockname()[1]}"
            wait_until(lambda: service.status()["in"]["peer"] == newest, "the newest taken")
            link.deliver(HEARTBEAT)
            for gcs in (again, second):
                gcs.wait_for(lambda m: m.get_type() == "HEARTBEAT", "a HEARTBEAT")
            first.sock.settimeout(5)
            assert first.sock.recv(100) == b""  # closed by the router
            for gcs in (again, first, second):
                gcs.close()


def test_endpoints_that_cannot_run_are_named_and_the_others_run() -> None:
    link = FakeLink()
    gcs = Gcs()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    routes = (
        command_route("udp-in", free_port()),
        route("udp-in", taken.getsockname()[1], "busy"),
        route("udp-out", gcs.port, "qgc"),
    )
    service = RouterService(link, routes, fc_secret=None, vehicle_systems={1})
    failed = service.start()
    try:
        assert "runs it unsigned" in failed["ops"]
        assert "only read-only endpoints run" in failed["ops"]
        assert "Address already in use" in failed["busy"]
        assert set(failed) == {"ops", "busy"}
        status = service.status()
        assert status["ops"]["state"].startswith("not started: a command endpoint needs")
        assert status["qgc"]["state"] == "running"
        link.deliver(HEARTBEAT)
        gcs.wait_for(lambda m: m.get_type() == "HEARTBEAT", "the stream on the one that runs")
    finally:
        service.stop()
        taken.close()
        gcs.close()


def test_a_listening_udp_endpoint_answers_only_a_sender_that_vouched_for_itself() -> None:
    link = FakeLink()
    port = free_port()
    honest, stranger = Gcs(GCS_KEY), Gcs()
    with routing(link, command_route("udp-in", port)) as service:
        link.deliver(HEARTBEAT)  # nobody to send to yet
        wait_until(lambda: counts(service, "ops", "out").get("no-peer") == 1, "no-peer")
        stranger.send(param_set("RTL_ALT_FINAL", 1.0), port)  # unsigned
        honest.send(C.MAVLink_heartbeat_message(6, 8, 0, 0, 4, 3), port)
        (frame,) = [link.sent.get(timeout=10)]
        assert decode(frame)[0].get_type() == "HEARTBEAT"
        assert service.status()["ops"]["peer"] == f"127.0.0.1:{honest.port}"
        stranger.send(b"not mavlink at all", port)
        wait_until(lambda: counts(service, "ops", "in").get("garbage", 0) >= 1, "garbage seen")
        assert service.status()["ops"]["peer"] == f"127.0.0.1:{honest.port}"
        link.deliver(HEARTBEAT)
        honest.wait_for(lambda m: m.get_type() == "HEARTBEAT", "the stream, to the signer")
        assert link.sent.empty()
    honest.close()
    stranger.close()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("udp:127.0.0.1:14550", "unknown endpoint type 'udp'"),
        ("udp-out:14550", "expected udp-out:HOST:PORT"),
        ("tcp-in:0.0.0.0:99999", "port must be a number from 1 to 65535"),
        ("tcp-out:host:", "port must be a number"),
    ],
)
def test_endpoint_urls_that_name_nothing_say_why(text: str, why: str) -> None:
    with pytest.raises(RouteUrlError, match=why):
        parse_route_url(text)


def test_endpoint_urls() -> None:
    url = parse_route_url("udp-out:gcs.example.net:14550")
    assert (url.kind, url.host, url.port, url.framing) == ("udp-out", "gcs.example.net", 14550,
                                                           "datagram")  # fmt: skip
    assert parse_route_url("tcp-in:0.0.0.0:5770").framing == "stream"
    assert str(parse_route_url(" udp-in:0.0.0.0:14560 ")) == "udp-in:0.0.0.0:14560"


# ---- ArduCopter SITL --------------------------------------------------------------------------
SITL_INSTANCE = 7  # TCP 5830 (SERIAL0), 5832 (SERIAL1), 5833 (SERIAL2)


@pytest.mark.sitl
def test_sitl_takes_a_ground_stations_command_re_signed_and_nothing_unsigned(
    tmp_path: Path,
) -> None:
    """ArduCopter SITL, fresh: a bystander holds SERIAL0 (SITL boots once it has a client,
    and ArduPilot checks nothing on channel 0), the companion signs on SERIAL2 as on the
    drone, and a ground station signed with its own key sets a parameter through the router,
    which ArduPilot answers; an unsigned request through the router changes nothing."""
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    sitl = SitlProcess(binary, speedup=1.0, instance=SITL_INSTANCE, workdir=tmp_path / "sitl")
    sitl.start()
    try:
        usb = mavutil.mavlink_connection(f"tcp:127.0.0.1:{sitl.port}", source_system=245)
        assert usb.wait_heartbeat(timeout=30) is not None
        companion = Vehicle.connect(
            f"tcp:127.0.0.1:{sitl.port + 3}",
            connect_timeout_s=30.0,
            heartbeat_interval_s=HEARTBEAT_S,
            signing_secret=DRONE,
        )
        port = free_port()
        ops, hostile = Gcs(GCS_KEY), Gcs()
        try:
            assert companion.link.signing == "on"  # SITL checks what comes on SERIAL2
            with routing(companion.link, command_route("udp-in", port)) as service:
                hostile.send(param_set("RTL_ALT_FINAL", 77.0), port)
                ops.send(param_set("RTL_ALT_FINAL", 42.0), port)
                reply = ops.wait_for(param_value("RTL_ALT_FINAL", 42.0), "SITL's PARAM_VALUE")
                assert (reply.get_srcSystem(), reply.get_srcComponent()) == (1, 1)
                assert signature_valid(GCS_KEY, reply)
                request = C.MAVLink_param_request_read_message(1, 1, b"RTL_ALT_FINAL", -1)
                ops.send(request, port)
                ops.wait_for(param_value("RTL_ALT_FINAL", 42.0), "the value read back")
                assert counts(service, "ops", "in")["unsigned"] == 1
            assert companion.link.stats.signature_rejects == {}
        finally:
            ops.close()
            hostile.close()
            companion.close()
            usb.close()
    finally:
        sitl.stop()
