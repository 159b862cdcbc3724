"""`skycourier run` takes a signed order and flies it: submitted with `skycourier order submit`
through the control socket, verified against the dispatcher's key, queued, flown by the
mission core against the built-in vehicle, and its outcome stored in the queue. A signed order
names its recipient, so with no verdict and no PIN the parcel is flown home, never released."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from companion.cli import main
from companion.config import Config, load_config
from companion.daemon import run_daemon
from companion.geo import offset
from companion.intake.queue import DONE, OrderQueue
from companion.mission.journal import Journal
from companion.security.keys import KeyStore, dispatcher_public_json
from companion.security.orders import create_order
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.waiting import wait_until

DRONE = "skycourier-1"


def _config(tmp_path: Path, server: VehicleServer, keys: Path, dispatcher_pub: Path) -> Config:
    return load_config(None).updated(
        "test",
        vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
        journal={"path": str(tmp_path / "journal.db")},
        security={
            "keys_dir": str(keys),
            "audit_path": str(tmp_path / "audit.jsonl"),
            "dispatcher_pub": str(dispatcher_pub),
            "nonce_path": str(tmp_path / "nonces.json"),
        },
        intake={
            "queue_path": str(tmp_path / "orders.db"),
            "socket_path": str(tmp_path / "control.sock"),
        },
        # No companion GPS or modem on this bench; the wind is declared.
        preflight={"companion_gps": False, "uplink": False, "declared_wind_mps": 3.0},
        flight={"recipient_timeout_s": 10.0},
        companion={"heartbeat_hz": 5.0},
    )


def _order(tmp_path: Path, keys: KeyStore, dispatcher: KeyStore, order_id: str) -> Path:
    now = int(time.time())
    lat, lon = offset(DEFAULT_HOME[0], DEFAULT_HOME[1], 120.0, 90.0)
    blob = create_order(
        dispatcher.dispatcher_signing_key(),
        drone_id=DRONE,
        seal_public=keys.drone_seal_key().public_key(),
        order_id=order_id,
        lat=lat,
        lon=lon,
        template=np.zeros((2, 128), dtype=np.float32),
        not_before=now - 5,
        expires=now + 3600,
    )
    path = tmp_path / f"{order_id}.json"
    path.write_bytes(blob)
    return path


def test_a_submitted_order_is_flown_and_without_a_recipient_the_parcel_comes_home(
    tmp_path: Path, capsys
) -> None:
    keys = KeyStore(tmp_path / "keys")
    keys.init_drone(DRONE)
    dispatcher = KeyStore(tmp_path / "dispatcher")
    dispatcher.init_dispatcher()
    pub = tmp_path / "dispatcher.pub.json"
    pub.write_bytes(dispatcher_public_json(dispatcher.dispatcher_signing_key().public_key()))
    with VehicleServer(DEFAULT_HOME, speedup=20.0, port=0) as server:
        config = _config(tmp_path, server, keys.path, pub)
        stop = threading.Event()
        result: list[int] = []
        daemon = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        daemon.start()
        try:
            socket_path = tmp_path / "control.sock"
            wait_until(socket_path.exists, "the control socket", 60)
            good = _order(tmp_path, keys, dispatcher, "o-100")
            assert main(["order", "submit", str(good), "--socket", str(socket_path)]) == 0
            assert '"accepted": true' in capsys.readouterr().out
            assert main(["status", "--socket", str(socket_path)]) == 0
            status = json.loads(capsys.readouterr().out)
            assert status["link"]["up"] is True
            assert status["orders"].get("queued", 0) + status["orders"].get("flying", 0) == 1
            # The same file again: its nonce is used up.
            assert main(["order", "submit", str(good), "--socket", str(socket_path)]) == 1
            assert '"reason": "replay"' in capsys.readouterr().out

            def flown() -> bool:
                with OrderQueue(tmp_path / "orders.db") as queue:
                    row = queue.get("o-100")
                return row is not None and row.state == DONE

            wait_until(flown, "the order flown and landed", 120)
        finally:
            stop.set()
            daemon.join(60)
        assert result == [0]
        assert not server.state.armed
        assert not server.state.gripper_released  # nobody was cleared: the parcel came home
    with OrderQueue(tmp_path / "orders.db") as queue:
        outcome = queue.get("o-100").outcome  # type: ignore[union-attr]
    assert outcome is not None and outcome.startswith("recipient not verified"), outcome
    with Journal(tmp_path / "journal.db") as journal:
        assert journal.unfinished() == []
        events = [e.event for e in journal.events("o-100")]
    # It flew: ready at the preflight, out to the drop, waited for a recipient, came home.
    for event in ("ready", "verify-recipient", "abort"):
        assert event in events, events
    assert events.index("ready") < events.index("verify-recipient") < events.index("abort")
