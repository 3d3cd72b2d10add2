"""Channel columns under attack (issue 14 item 5, "Broke" 6): claimed before any DDL, atomically.

A rogue device sending 16 junk channels x 5 messages once created 80 columns past the cap of
64 (two writers raced the check), after which `temperature` was refused; a channel named like
a PostgreSQL system column (`xmin`) failed whole batches. Here: real SQLite and PostgreSQL,
two writers at once, real collectors behind real Mosquitto.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from edgewatch.core.schema import SchemaError, Telemetry, parse_telemetry
from edgewatch.core.settings import MqttSettings
from edgewatch.core.store import KNOWN_CHANNELS, Store
from edgewatch.services.broker import Broker
from edgewatch.services.collector import Collector
from figures import record
from hostkit import HOST_PW, Board, telemetry, wait_until
from test_collector import PG, _reachable


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ew.db"
    if not _reachable(5432):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 on this machine")
    return PG


def _stores(url, n=2):
    prefix = f"ew{uuid.uuid4().hex[:10]}_"
    return [Store(url, prefix) for _ in range(n)]


def _junk(i: int) -> str:
    return f"junk{i:03d}"


def test_two_writers_racing_never_pass_the_caps(db_url):
    """16 junk channels x 5 messages from each of 4 rogue devices, through two connections at
    once, against a cap of 20 columns: 18 claimed (the known two and one whole message), never more,
    and temperature still stored."""
    stores = _stores(db_url)
    cap, per_device = 20, 16
    go = threading.Barrier(2)
    refused = [0, 0]

    def writer(k: int):
        s = stores[k]
        go.wait()
        seq = 0
        for dev in range(4):
            for m in range(5):
                names = {_junk(dev * 80 + m * 16 + j) for j in range(16)}
                seq += 1
                why = s.claim_channels(f"rogue-{dev}", names, cap=cap, per_device=per_device)
                if why:
                    refused[k] += 1
                    continue
                rec = Telemetry(f"rogue-{dev}", seq * 2 + k, None, dict.fromkeys(names, 1.0))
                s.write([(rec, 1.0)], [])

    try:
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        s = stores[0]
        claimed = s.query(f"SELECT slot, channel FROM {s.t_chan} ORDER BY slot")
        assert len(claimed) <= cap, len(claimed)
        # known 2 + one message's 16 (all of a message or none): never past the cap, no slot twice
        assert [r[0] for r in claimed] == list(range(18))
        assert set(KNOWN_CHANNELS) <= {r[1] for r in claimed}
        s.channels = s._channel_columns()
        assert len(s.channels) <= cap
        assert s.channels <= {r[1] for r in claimed}  # no column without its claim
        per = s.query(f"SELECT device, COUNT(*) FROM {s.t_devchan} GROUP BY device")
        assert all(n <= per_device for _, n in per)
        assert sum(refused) > 0
        # then many small claims at once, racing for the last slots of a cap of 40
        go2 = threading.Barrier(2)

        def single(k: int):
            go2.wait()
            for i in range(60):
                stores[k].claim_channels(f"rogue-{i % 20}", {f"solo{k}_{i:02d}"}, cap=40,
                                         per_device=per_device)

        threads = [threading.Thread(target=single, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        n = s.query(f"SELECT COUNT(*), MAX(slot) FROM {s.t_chan}")[0]
        assert tuple(n) == (40, 39), n  # filled to the cap exactly, never past it
        # the known channels are never refused, whoever filled the table
        assert s.claim_channels("gh-01", {"temperature", "humidity"}, cap=cap,
                                per_device=per_device) is None
        s.write([(Telemetry("gh-01", 1, None, {"temperature": 21.5, "humidity": 40.0}), 1.0)], [])
        assert s.query("SELECT temperature FROM {telemetry} WHERE device = 'gh-01'") == [(21.5,)]
    finally:
        stores[0].drop()
        for s in stores:
            s.close()


def test_one_device_cannot_use_up_the_table(db_url):
    s, = _stores(db_url, 1)
    try:
        for m in range(5):  # the attack of issue 14: 80 distinct junk names from one board
            s.claim_channels("rogue", {_junk(m * 16 + j) for j in range(16)}, cap=64,
                             per_device=16)
        assert s.query(f"SELECT COUNT(*) FROM {s.t_devchan} WHERE device = 'rogue'") == [(16,)]
        # every other board still gets its own new channel
        assert s.claim_channels("gh-02", {"co2", "temperature"}, cap=64, per_device=16) is None
        why = s.claim_channels("rogue", {"co2"}, cap=64, per_device=16)
        assert why and "16 channels for device rogue" in why
        # reserved names are refused before any DDL, also past the schema
        for bad in ("xmin", "ctid", "tableoid", "epoch", "rowid", "select"):
            assert "reserved" in s.claim_channels("gh-02", {bad}, cap=64, per_device=16)
        allow = frozenset({"co2"})
        assert "not on the allowed list" in s.claim_channels("gh-03", {"pm25"}, cap=64,
                                                             per_device=16, allow=allow)
        assert s.claim_channels("gh-03", {"co2", "humidity"}, cap=64, per_device=16,
                                allow=allow) is None
    finally:
        s.drop()
        s.close()


@pytest.mark.parametrize("name", ["xmin", "cmax", "ctid", "oid", "tableoid", "epoch", "rowid",
                                  "Select", "ORDER"])
def test_schema_refuses_reserved_channel_names(name):
    with pytest.raises(SchemaError, match="reserved"):
        parse_telemetry(json.dumps(telemetry("gh-01", 1, **{name: 1.0})))


def test_a_poisoned_message_costs_only_its_own_row(db_url, tmp_path):
    """1 message in 100 carries `xmin` or 17 new junk channels: the others are stored in full
    batches (no batch is split into 1-row transactions), the bad ones are refused alone."""
    s, = _stores(db_url, 1)
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}) as broker:
        mq = MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW)
        col = Collector(s, mq, batch=200, flush_ms=50, ha_discovery=False,
                        device_channels=4).start()
        host = Board(broker, "edgewatch", HOST_PW)
        try:
            for seq in range(1000):
                if seq % 100 == 50:
                    body = telemetry("gh-01", seq, temperature=1.0, xmin=2.0)
                elif seq % 100 == 99:
                    body = telemetry("gh-01", seq, **{_junk(j + seq): 1.0 for j in range(5)})
                else:
                    body = telemetry("gh-01", seq)
                host.c.publish("edgewatch/gh-01/telemetry", json.dumps(body).encode(), qos=1)
            wait_until(lambda: col.metrics.value("edgewatch_messages_rejected_total",
                                                 reason="invalid") >= 20
                       and s.count() >= 980, timeout=60, what="980 stored, 20 refused")
            record(f"{db_url.split(':')[0]}: valid rows stored of 980 (1 % poison)", s.count())
            record(f"{db_url.split(':')[0]}: batches split by poison", col.metrics.value("edgewatch_batches_split_total"))
            assert s.count() == 980
            assert col.metrics.value("edgewatch_batches_split_total") == 0
            assert s.query(f"SELECT COUNT(*) FROM {s.t_devchan} WHERE device = 'gh-01'") \
                == [(0,)]  # its 5-channel messages were over its limit of 4: none claimed
        finally:
            host.close()
            col.stop()
            s.drop()
            s.close()
