"""The durability claims, tested the hard way: a writer process is killed with SIGKILL at
random points, again and again, and what it had been told was durable must all be there.

- The telemetry store (`companion.telemetry.store.Store`): a writer appends telemetry and
  events (printing each seq once `append` has returned: acknowledged) and drains as the
  uplink does (peek a batch, "deliver" it to a log file, `ack_through`). After every kill
  and a final reopen: every acknowledged event is queued or was delivered; acknowledged
  telemetry is missing only as far as the store says it thinned (its bound is small here, so
  thinning runs often); nothing is queued twice, no seq is used twice, and a record is
  delivered again only if a kill came between its delivery and its ack (at-least-once: at
  most one batch per kill).
- The mission journal (`companion.mission.journal.Journal`, synchronous=FULL): a writer
  starts missions, records transitions and finishes them, printing each once the call has
  returned. Every acknowledged start, transition and finish is in the journal with its seq,
  once, and the missions it lists as unfinished are exactly those not acknowledged finished
  (give or take the one a kill interrupted).

The kill comes when the parent has read a random number of acknowledgements, so it lands
wherever the writer happens to be: inside SQLite, between a commit and the print, between a
delivery and its ack. SIGKILL tests process death; power loss is the synchronous setting's
business (FULL for events and the journal), which no test on a page cache can show.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from companion.mission.journal import Journal
from companion.telemetry.store import Store

ROOT = Path(__file__).resolve().parents[1]
KILLS = 20
#: The store's bound in the writer: small, so that thinning runs under the kills too.
MAX_ROWS = 150
DRAIN_BATCH = 16

STORE_WRITER = """
import os, random, sys
sys.path.insert(0, {root!r})
from companion.telemetry.store import Store
db, log, run, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
store = Store(db, max_rows={max_rows})
delivered = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
n = 0
while True:
    roll = rng.random()
    if roll < 0.96:
        kind = "event" if roll < 0.15 else "telemetry"
        name = f"{{run}}-{{n}}"
        n += 1
        seq = store.append(kind, "t/" + kind, f"{{kind}}:{{name}}".encode())
        print(f"A {{kind}} {{name}} {{seq}}", flush=True)
    else:
        batch = store.peek({batch})
        if batch:
            lines = "".join(f"{{r.payload.decode()}} {{r.seq}}\\n" for r in batch)
            os.write(delivered, lines.encode())  # the broker has them
            store.ack_through(batch[-1].seq)
"""

JOURNAL_WRITER = """
import random, sys
sys.path.insert(0, {root!r})
from companion.mission.journal import Journal
db, run, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
journal = Journal(db)
for m in range(10**9):
    mission = f"{{run}}-{{m}}"
    journal.start_mission(mission, {{"mission_id": mission, "n": m}})
    print(f"S {{mission}}", flush=True)
    for step in range(rng.randrange(1, 6)):
        seq = journal.record(mission, "cruise", f"step-{{step}}", {{"step": step}}, step * 1.5)
        print(f"R {{mission}} {{seq}} step-{{step}}", flush=True)
    if rng.random() < 0.8:
        seq = journal.finish(mission, "delivered")
        print(f"F {{mission}} {{seq}}", flush=True)
"""


def _kill_after(argv: list[str], acks: int) -> list[str]:
    """Run `argv`, SIGKILL it once it has printed `acks` lines; every complete line."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None
    lines: list[str] = []
    enough = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            if raw.endswith(b"\n"):  # a line cut by the kill was never acknowledged
                lines.append(raw.decode().strip())
            if len(lines) >= acks:
                enough.set()
        enough.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    enough.wait(120.0)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30.0)
    reader.join(30.0)
    assert process.returncode == -signal.SIGKILL, "the writer ended before it was killed"
    return lines


def test_the_store_keeps_what_it_acknowledged_through_kill_9(tmp_path: Path) -> None:
    db, log = tmp_path / "queue.db", tmp_path / "delivered.log"
    code = STORE_WRITER.format(root=str(ROOT), max_rows=MAX_ROWS, batch=DRAIN_BATCH)
    rng = random.Random(20261207)
    acked: dict[str, tuple[str, int]] = {}  # name -> (kind, seq)
    for run in range(KILLS):
        argv = [sys.executable, "-c", code, str(db), str(log), str(run), str(rng.random())[2:]]
        for line in _kill_after(argv, rng.randrange(20, 600)):
            _, kind, name, seq = line.split()
            acked[name] = (kind, int(seq))

    store = Store(db, max_rows=MAX_ROWS)
    stats = store.stats()
    queued = [(r.payload.decode().split(":", 1), r.seq) for r in store.peek(10**6)]
    store.close()
    delivered = Counter()
    delivered_seq: dict[str, int] = {}
    for line in log.read_text().splitlines():
        payload, seq = line.rsplit(" ", 1)
        name = payload.split(":", 1)[1]
        delivered[name] += 1
        assert delivered_seq.setdefault(name, int(seq)) == int(seq), "one record, two seqs"
    queued_names = Counter(name for (_, name), _ in queued)

    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert max(queued_names.values(), default=1) == 1, "a record queued twice"
    for (_, name), seq in queued:
        if name in acked:
            assert acked[name][1] == seq, f"{name}: queued under another seq"
    seqs = [seq for _, seq in acked.values()]
    assert len(seqs) == len(set(seqs)), "a seq was used twice"
    missing = [n for n in acked if n not in queued_names and n not in delivered]
    assert not [n for n in missing if acked[n][0] == "event"], "an acknowledged event was lost"
    assert len(missing) <= stats.thinned, (len(missing), stats.thinned)
    # At-least-once, no more: a repeat only for a batch delivered when the kill came.
    repeats = sum(count - 1 for count in delivered.values()) + sum(
        1 for name in queued_names if name in delivered
    )
    assert repeats <= KILLS * DRAIN_BATCH, repeats
    # At most the one append per kill that committed before its acknowledgement was printed.
    unacked = [n for n in (*queued_names, *delivered) if n not in acked]
    assert len(set(unacked)) <= KILLS
    assert len(acked) > KILLS * 20 and stats.thinned > 0  # it really ran, and thinned


def test_the_journal_keeps_what_it_acknowledged_through_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    code = JOURNAL_WRITER.format(root=str(ROOT))
    rng = random.Random(20261208)
    started: set[str] = set()
    finished: dict[str, int] = {}
    recorded: dict[str, list[tuple[int, str]]] = {}
    for run in range(KILLS):
        argv = [sys.executable, "-c", code, str(db), str(run), str(rng.random())[2:]]
        for line in _kill_after(argv, rng.randrange(5, 150)):
            kind, mission, *rest = line.split()
            if kind == "S":
                started.add(mission)
            elif kind == "R":
                recorded.setdefault(mission, []).append((int(rest[0]), rest[1]))
            else:
                finished[mission] = int(rest[0])

    with Journal(db) as journal:
        unfinished = set(journal.unfinished())
        for mission in started:
            assert journal.plan(mission)["mission_id"] == mission
            events = journal.events(mission)
            seqs = [e.seq for e in events]
            assert seqs == sorted(set(seqs)), f"{mission}: a transition twice or out of order"
            have = [(e.seq, e.event) for e in events]
            for entry in recorded.get(mission, []):
                assert entry in have, f"{mission}: acknowledged {entry} lost"
            if mission in finished:
                assert journal.outcome(mission) == "delivered"
                assert (finished[mission], "finished") in have
        # Unfinished: the started missions not acknowledged finished, give or take one per
        # kill (started, or finished, in the file just before the kill cut the print).
        assert not unfinished & set(finished)
        assert len(unfinished - started) <= KILLS
        assert len((started - set(finished)) - unfinished) <= KILLS
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(started) > KILLS and finished
