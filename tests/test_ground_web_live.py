"""The live feed (/api/live, server-sent events) on a real uvicorn: what the ingest stores
reaches a signed-in browser; a reader that does not keep up is bounded and told to resync."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

import httpx

from ground.web.live import LiveHub
from tests.ground_web_fixtures import PASSWORD, T0, event, form_csrf, make_web, served, telemetry


def test_stored_records_reach_the_live_stream(tmp_path: Path) -> None:
    web = make_web(tmp_path)
    with served(web.app) as base, httpx.Client(base_url=base, timeout=20) as client:
        assert client.get("/api/live").status_code == 401
        page = client.get("/login")
        client.post(
            "/login", data={"username": "alice", "password": PASSWORD, "csrf": form_csrf(page.text)}
        )
        with client.stream("GET", "/api/live") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            sample = telemetry("d1", 1, T0, 51.5, -0.1)
            web.store.ingest([sample, event("d1", 2, T0, "enter", "o-1", drop=[51.51, -0.1])])
            kind = next(line for line in lines if line.startswith("event:"))
            data = json.loads(next(lines).removeprefix("data: "))
        assert kind == "event: records"
        (point,) = data["telemetry"]
        assert (point["drone_id"], point["lat"], point["battery_pct"]) == ("d1", 51.5, 80)
        assert data["events"][0]["detail"] == {"drop": [51.51, -0.1]}
        web.store.ingest([sample])  # delivered again: nothing new, nothing pushed
        assert web.ground.hub.published == 1
    web.store.close()


def test_a_slow_reader_is_bounded_and_told_to_resync() -> None:
    async def scenario() -> list[tuple[str, str] | None]:
        hub = LiveHub(max_batches=3)
        sub = hub.subscribe()
        for seq in range(10):
            hub.publish([telemetry("d1", seq + 1, T0 + seq, 51.5, -0.1)])
        await asyncio.sleep(0)  # let the loop run the queued hand-overs
        assert len(sub.queue) == 3 and sub.dropped == 7
        got = [await sub.next(0.01), await sub.next(0.01)]
        hub.unsubscribe(sub)
        assert hub.dropped == 7 and hub.subscribers == 0
        return got

    first, second = asyncio.run(scenario())
    assert first == ("resync", "{}")  # the page fetches the current state again
    assert second is None  # what was queued before the resync is dropped with it
