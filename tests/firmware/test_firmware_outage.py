"""A broker outage of 60 s mid-stream: the board keeps sampling into its outbox and, once the
broker is back, delivers every sample exactly once per seq, each stored with the time it was
measured although the board has no clock (`t` null: the message carries its age)."""

import re
import time

from edgewatch.board import fwrun
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import Store
from edgewatch.services.broker import Broker
from edgewatch.services.collector import Collector
from figures import record
from hostkit import wait_until

from tests.firmware.test_firmware_e2e import BOARD, sim, summary, test_config

OUTAGE_S = 60
PERIOD_MS = 250
SAMPLES = 290  # 72 s of sampling: 5 s before, 60 s during and 7 s after the outage (240
# samples during it: within the newest 256 records a board without a clock can date,
# firmware/app.py AGE_RING)


def test_60s_broker_outage_loses_no_sample_and_keeps_measurement_times(tmp_path):
    broker = Broker(tmp_path / "broker", persistence=True).start()
    try:
        # a persistent session: what the board publishes while we reconnect still reaches us
        listener = fwrun.Listener(broker.port, client_id="outage-collector", persistent=True)
        flash = fwrun.prepare(tmp_path / "b", "out-1", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                              sim=sim([]), **test_config(period_ms=PERIOD_MS, stop_after=SAMPLES,
                                                         outbox={"slots": 1500},
                                                         sim_no_clock=True))
        st = Store(f"sqlite:///{tmp_path}/ew.db")
        col = Collector(st, MqttSettings(port=broker.port), batch=64, flush_ms=20,
                        ha_discovery=False).start()
        proc = fwrun.start(flash, BOARD)
        wait_until(lambda: len(listener.json("telemetry")) >= 20, 30, what="first 20 samples")
        down_at = time.time()
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.start()
        up_at = time.time()
        assert proc.wait(90) == 0, fwrun.console(flash)[-3000:]
        console = fwrun.console(flash)
        s = summary(console)
        n = s["next_seq"]
        wait_until(lambda: len({m["seq"] for k in ("telemetry", "alert") for m in listener.json(k)}) >= n,
                   30, what=f"all {n} records at the collector")
        wait_until(lambda: st.count() == SAMPLES, 30, what="every sample stored")
        stored = st.query("SELECT seq, t, received FROM {telemetry} ORDER BY seq")
        listener.settle()
        listener.close()
        col.stop()
        st.close()
    finally:
        broker.stop()
    tel, alerts = listener.json("telemetry"), listener.json("alert")
    seqs = [m["seq"] for m in tel + alerts]
    assert sorted(set(seqs)) == list(range(n)), "every seq 0..N-1 arrived"
    # the board's copies: without the broker's own resends to the collector after its restart
    sent = [m["seq"] for k in ("telemetry", "alert") for m in listener.json(k, redelivered=False)]
    dups = len(sent) - len(set(sent))
    # a duplicate may only be a QoS 1 redelivery of a record in flight when the broker went
    assert dups <= 1, f"{dups} duplicates"
    assert len({m["seq"] for m in tel}) == SAMPLES and s["dropped"] == 0
    # sampling went on during the outage, on time, and the host knows when: the board has
    # no clock (t null), so each message carries its age at sending and the collector
    # stores received - age; the samples taken during the outage arrive after it
    assert all(m["t"] is None for m in tel) and all("age" in m for m in tel)
    during = [r for r in stored if down_at + 1 <= r[1] <= up_at - 1]
    late = [r for r in stored if r[2] > up_at]  # arrived after the outage
    record("samples taken during the outage, stored with a time inside it", len(during))
    record("largest |stored t - measured t| between successive samples (s)", round(max(
        abs((b[1] - a[1]) - PERIOD_MS / 1000) for a, b in zip(stored, stored[1:], strict=False)), 3))
    assert len(during) >= (OUTAGE_S - 3) * 1000 // PERIOD_MS * 0.9, len(during)
    assert all(r[2] > up_at for r in during) and len(late) >= len(during)
    assert all(r[1] <= r[2] for r in stored)  # measured before it was received
    # consecutive samples are a period apart in stored time, through the outage (tolerance:
    # the board's loop on a loaded 2-core machine)
    steps = [b[1] - a[1] for a, b in zip(stored, stored[1:], strict=False)]
    assert sum(abs(d - PERIOD_MS / 1000) > 0.5 for d in steps) <= 3, max(steps)
    assert not [a for a in alerts if a["rule"] == "dropout"]
    # reconnect attempts backed off (bounded, growing, jittered) instead of hammering
    delays = [int(d) for d in re.findall(r"mqtt.*? failed .*? next in (\d+) ms", console)]
    assert 5 <= len(delays) <= OUTAGE_S * 1000 // 100
    assert max(delays) <= 2000 and max(delays) > min(delays)
    assert console.count("link: mqtt connected") == 2
    print(f"\noutage {OUTAGE_S} s, no clock: {n} records, {len(during)} sampled during the outage, "
          f"{len(delays)} reconnect attempts, {dups} duplicates, heap min free {s['heap_min_free']} B")
