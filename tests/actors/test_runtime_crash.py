"""An actor process told to stop (SIGTERM) stops cleanly and delivers what it recorded. The real `fleet actor`
command runs in a subprocess (tests/faults/sim_fleet.ActorProcess) against a real redis-server. SIGKILL during
a store outage is tests/faults/test_actor_faults.py's (sent vs stored, audited)."""

from __future__ import annotations

import time
from pathlib import Path

from actors.embodiments import schemas
from fleet.config import ReplayConfig
from fleet.redis_server import EmbeddedRedis
from fleet.replay import ReplayStore
from fleet.status import StatusBoard
from tests.faults.sim_fleet import ActorProcess


def test_sigterm_stops_cleanly_and_delivers_what_was_recorded(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    actor = ActorProcess(
        "franka-10", "franka", "reach", tmp_path / "fleet", redis_server.url, redis_server.password
    )
    try:
        deadline = time.monotonic() + 90
        while len(actor.printed) < 2 and actor.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(actor.printed) >= 2, f"actor exited with {actor.proc.poll()} before recording 2 episodes"
        t = time.monotonic()
        status = actor.terminate(timeout_s=30)
        stopped_s = time.monotonic() - t
    finally:
        actor.close()
    assert status == 0 and stopped_s < 10, actor.log_text()[-2000:]
    done = [line for line in actor.output if line.startswith("done:")]
    assert len(done) == 1 and "0 episodes left in the spool" in done[0]
    client = redis_server.client()
    store = ReplayStore(client, ReplayConfig(), schemas=schemas(), decode_workers=0)
    try:
        assert set(store.episode_ids()) == set(
            actor.printed
        )  # the unfinished episode was dropped, not stored
        (hb,) = [h for h in StatusBoard(client).heartbeats() if h.robot_id == "franka-10"]  # the final beat
        assert hb.episodes_sent == len(actor.printed) and hb.spool_backlog == 0
    finally:
        store.close()
        client.close()
