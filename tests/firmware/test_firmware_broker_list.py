"""The firmware's broker list: a dead first node costs one backoff, the next node gets every sample.

A real board (firmware under the unix port) is given ``mqtt://<dead port>,mqtt://<Mosquitto>``;
it must move on after the failed connect, deliver seq 0..n-1 once, and log the node it reached.
"""

import threading

from edgewatch.board.sim import Fleet
from edgewatch.core.schema import Alert, Telemetry
from edgewatch.services.broker import Broker, free_port
from edgewatch.services.mqtt_watch import Watch


def test_board_moves_to_the_next_broker_of_its_list(tmp_path):
    dead = free_port()  # nothing listens: connection refused
    with Broker(tmp_path / "broker") as b:
        rec = Watch(b.port)
        fleet = Fleet(tmp_path / "fleet", 1, f"mqtt://127.0.0.1:{dead},mqtt://127.0.0.1:{b.port}",
                      None, faults=[], period=0.05, samples=30, clean=1,
                      extra={"backoff": {"min_ms": 100, "max_ms": 400}})
        fleet.start()
        try:
            assert fleet.wait(timeout=60), "board did not finish"
        finally:
            fleet.stop()
        threading.Event().wait(0.5)
        rec.close()
    log = "\n".join(fleet.devices[0].log)
    assert "link: mqtt connect failed" in log
    assert f"link: mqtt connected to 127.0.0.1:{b.port}" in log
    assert f"connected to 127.0.0.1:{dead}" not in log
    # telemetry and alerts share the outbox's seqs: on a loaded machine a late sample makes
    # a dropout alert, which takes the next seq; every seq arrives once, 30 of them samples
    seqs = sorted(r.seq for r in rec.records if isinstance(r, (Telemetry, Alert)))
    assert seqs == list(range(len(seqs)))
    assert sum(isinstance(r, Telemetry) for r in rec.records) == 30
