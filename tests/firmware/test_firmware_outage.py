"""A broker outage of 30 s mid-stream: the board keeps sampling into its outbox and, once the
broker is back, delivers every sample exactly once per seq."""

import re
import time

from edgewatch.board import fwrun
from edgewatch.services.broker import Broker
from hostkit import wait_until

from tests.firmware.test_firmware_e2e import BOARD, sim, summary, test_config

OUTAGE_S = 30
PERIOD_MS = 40
SAMPLES = 1000  # 40 s of sampling: about 5 s before, 30 s during and 5 s after the outage


def test_30s_broker_outage_loses_no_sample(tmp_path):
    broker = Broker(tmp_path / "broker", persistence=True).start()
    try:
        # a persistent session: what the board publishes while we reconnect still reaches us
        listener = fwrun.Listener(broker.port, client_id="outage-collector", persistent=True)
        flash = fwrun.prepare(tmp_path / "b", "out-1", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                              sim=sim([]), **test_config(period_ms=PERIOD_MS, stop_after=SAMPLES,
                                                         outbox={"slots": 1500}))
        proc = fwrun.start(flash, BOARD)
        wait_until(lambda: len(listener.json("telemetry")) >= 100, 30, what="first 100 samples")
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
        listener.settle()
        listener.close()
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
    # sampling went on during the outage, on time: readings stamped inside it, no dropout
    during = [m for m in tel if down_at + 1 <= (m["t"] or 0) <= up_at - 1]
    assert len(during) >= (OUTAGE_S - 3) * 1000 // PERIOD_MS * 0.9, len(during)
    assert not [a for a in alerts if a["rule"] == "dropout"]
    # reconnect attempts backed off (bounded, growing, jittered) instead of hammering
    delays = [int(d) for d in re.findall(r"mqtt.*? failed .*? next in (\d+) ms", console)]
    assert 5 <= len(delays) <= OUTAGE_S * 1000 // 100
    assert max(delays) <= 2000 and max(delays) > min(delays)
    assert console.count("link: mqtt connected") == 2
    print(f"\noutage {OUTAGE_S} s: {n} records, {len(during)} sampled during the outage, "
          f"{len(delays)} reconnect attempts, {dups} duplicates, heap min free {s['heap_min_free']} B")
