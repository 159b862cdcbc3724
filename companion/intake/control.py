"""The daemon's local control socket: orders submitted on the drone itself.

A Unix stream socket (`[intake] socket_path`), created with mode 0660 so that only the
daemon's user and group (an operator added to the `skycourier` group) may write to it: file
permissions are the authentication, and the order's own signature is still verified like
any other. One request per connection, one JSON line each way:

    -> {"op": "submit", "order": "<the order file's text>"}
    <- {"accepted": true, "reason": "accepted", "order_id": "...", ...}
    -> {"op": "status"}
    <- {"link": {...}, "vehicle": {...}, "mission": {...}, "orders": {...}, ...}
    -> {"op": "command", "command": "hold", "order_id": null}
    <- {"accepted": true, "reason": "accepted", "command_id": "control-...", ...,
        "reaction": {"event": "hold", "phase": "cruise", ...}}

An operator command from the socket carries no signature: the socket's permissions are its
authentication (`companion.intake.commands`), and it is audited with the source "control".

Everything from the socket is hostile: a request is read up to a bound (an order's maximum
size plus its envelope) within a deadline, and anything that is not one well-formed request
gets an error answer naming what was wrong; the connection is then closed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from companion.intake.intake import OrderAck
from companion.security.orders import MAX_ORDER_BYTES

log = logging.getLogger(__name__)

#: A request: an order (at most MAX_ORDER_BYTES, escaped in JSON at most ~6x) and the envelope.
MAX_REQUEST_BYTES = 6 * MAX_ORDER_BYTES + 1024
#: How long one client may take to send its request.
REQUEST_TIMEOUT_S = 5.0


class ControlError(Exception):
    """The control socket cannot be used; the message says which path and why."""


class ControlServer:
    """Serves `submit(blob, source)`, `status()` and `command(command, order_id)` (an
    operator command's answer) on a Unix socket at `path` on its own thread."""

    def __init__(
        self,
        path: Path | str,
        submit: Callable[[bytes, str], OrderAck],
        status: Callable[[], dict] | None = None,
        command: Callable[[str, str | None], dict] | None = None,
    ) -> None:
        self.path = Path(path)
        self._submit = submit
        self._status = status
        self._command = command
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        """Bind (replacing a stale socket file from a dead daemon) and serve."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_socket():
                self.path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o117)  # the file is created 0660: owner and group only
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            sock.listen(8)
            sock.settimeout(0.5)
        except OSError as exc:
            raise ControlError(f"{self.path}: cannot serve the control socket: {exc}") from exc
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket %s ready", self.path)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._sock is not None:
            self._sock.close()
        try:
            if self.path.is_socket():
                self.path.unlink()
        except OSError:
            pass

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("control socket %s: %s", self.path, exc)
                return
            with conn:
                try:
                    answer = self._answer(conn)
                except Exception as exc:  # one bad client must not take the socket down
                    log.exception("control socket request failed")
                    answer = {"error": f"internal error: {type(exc).__name__}"}
                try:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError as exc:
                    log.warning("control socket: answer not delivered: %s", exc)

    def _answer(self, conn: socket.socket) -> dict:
        conn.settimeout(REQUEST_TIMEOUT_S)
        data = bytearray()
        try:
            while b"\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REQUEST_BYTES:
                    return {"error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
        except TimeoutError:
            return {"error": f"no complete request within {REQUEST_TIMEOUT_S:g} s"}
        line = bytes(data).split(b"\n", 1)[0]
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"error": f"not a JSON request: {exc}"}
        if isinstance(request, dict) and request.get("op") == "status" and self._status:
            return self._status()
        if isinstance(request, dict) and request.get("op") == "command" and self._command:
            return self._operator_command(request)
        if not isinstance(request, dict) or request.get("op") != "submit":
            return {
                "error": 'expected {"op": "submit", "order": "..."}, {"op": "status"} or '
                '{"op": "command", "command": "...", "order_id": null}'
            }
        order = request.get("order")
        if not isinstance(order, str):
            return {"error": "submit: 'order' must be the order file's text"}
        return self._submit(order.encode("utf-8", "surrogatepass"), "control-socket").as_dict()

    def _operator_command(self, request: dict) -> dict:
        assert self._command is not None
        command, order_id = request.get("command"), request.get("order_id")
        if not isinstance(command, str):
            return {"error": "command: 'command' must be the command's name"}
        if order_id is not None and not isinstance(order_id, str):
            return {"error": "command: 'order_id' must be an order id or null"}
        return self._command(command, order_id)


def submit_order(path: Path | str, blob: bytes, timeout_s: float = 30.0) -> dict:
    """Send an order to a running daemon's control socket; its answer. ControlError when no
    daemon answers there."""
    order = blob.decode("utf-8", "surrogateescape")
    return request(path, {"op": "submit", "order": order}, timeout_s)


def send_command(
    path: Path | str, command: str, order_id: str | None = None, timeout_s: float = 30.0
) -> dict:
    """Give a running daemon an operator command (`skycourier command hold`); its answer.
    ControlError when no daemon answers there."""
    return request(path, {"op": "command", "command": command, "order_id": order_id}, timeout_s)


def daemon_status(path: Path | str, timeout_s: float = 10.0) -> dict:
    """A running daemon's status (`skycourier status`); ControlError when none answers."""
    return request(path, {"op": "status"}, timeout_s)


def request(path: Path | str, message: dict, timeout_s: float) -> dict:
    """One request to the control socket and its answer."""
    line = json.dumps(message)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(line.encode("utf-8", "surrogateescape") + b"\n")
            data = bytearray()
            while b"\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(
            f"{path}: no daemon answers ({exc.strerror or exc}); is `skycourier run` running "
            "with this [intake] socket_path, and are you in its group?"
        ) from exc
    try:
        answer = json.loads(bytes(data).split(b"\n", 1)[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"{path}: the daemon's answer is not JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: the daemon's answer is not an object")
    return answer
