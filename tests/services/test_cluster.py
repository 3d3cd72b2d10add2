"""The fleet on a three-node RabbitMQ cluster, proven by losing a node, a collector and a bridge.

Real parts only: three ``rabbitmq-server`` nodes on free loopback ports
(host/cluster.py), four simulated boards running the real firmware under the
MicroPython unix port with the cluster's three MQTT URLs, two `edgewatch collect`
and two `edgewatch bridge` processes on the cluster's quorum queues (one shared
SQLite database, one shared outbox), the Twilio stand-in. Mid-stream the node the
boards, the first collector and the queues' leader sit on is killed with -9 and
later restarted; one collector and one bridge are killed with -9 as well. Then
every sample a board saw PUBACKed must be stored exactly once, and every alert
sent as one SMS exactly once.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from collections import Counter

import pytest
from edgewatch.board.sim import Fleet, rows_needed
from edgewatch.services import cluster as hc
from edgewatch.services.broker import free_port
from hostkit import service_env, spawn, wait_until

from tools.twilio_sink import TwilioSink

pytestmark = pytest.mark.skipif(not list(hc.RABBIT_LIB.glob("rabbitmq_server-*/sbin")),
                                reason="RabbitMQ is not installed (apt-get install rabbitmq-server)")

KINDS = ["spike", "stuck", "range", "fail"]
BOARDS = 4
PERIOD = 0.1
DONE = re.compile(r"app: done samples=(\d+) alerts=(\d+) sent=(\d+) outbox=(\d+) dropped=(\d+)"
                  r".* next_seq=(\d+)")
RULE = re.compile(r"^edgewatch (\S+): .*\((\w+)\) at ")


def _started(log, proc, text, timeout=60):
    wait_until(lambda: proc.poll() is not None or text in log.read_text(), timeout=timeout,
               what=f"{log.name}: {text!r}")
    assert proc.poll() is None, log.read_text()[-3000:]


def _kill(proc):
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_node_collector_and_bridge_killed_nothing_lost_nothing_doubled(tmp_path):
    t_start = time.monotonic()
    users = {f"sim-{i + 1:02d}": f"pw-{i + 1}-secret" for i in range(BOARDS)}
    cl = hc.Cluster(tmp_path / "cluster")
    sink = TwilioSink(auth_token="tok-cluster").start()
    procs: dict[str, object] = {}
    ports: dict[str, int] = {}
    fleet = None
    try:
        cl.up(users)
        urls = cl.amqp_url()
        head, hosts = urls.rsplit("@", 1)
        hosts = hosts.split(",")
        db = tmp_path / "edgewatch.db"
        env = service_env(EDGEWATCH_COOLDOWN="0", EDGEWATCH_MAX_PER_MINUTE="0",
                          TWILIO_TO="+15551230001", TWILIO_ACCOUNT_SID=sink.account_sid,
                          TWILIO_AUTH_TOKEN=sink.auth_token, TWILIO_FROM="+15005550006",
                          TWILIO_API_BASE=sink.url, TWILIO_TIMEOUT="2",
                          TWILIO_MAX_LATENCY="3")  # the stand-in lists an SMS at once

        def start(name, order):
            url = f"{head}@{','.join(hosts[k] for k in order)}"
            log = tmp_path / f"{name}.log"
            if name == "col-a":
                port = free_port()
                ports[name] = port
            if name.startswith("col"):
                # col-a fills a batch for up to 1.5 s, so when it is killed it holds received,
                # uncommitted samples: acknowledged before the commit, they would be lost
                flush = "1500" if name == "col-a" else "50"
                args = ["collect", "--db", f"sqlite:///{db}", "--broker", url, "--batch", "5000",
                        "--flush-ms", flush, "--no-discovery"]
                if name in ports:
                    args += ["--metrics-port", str(ports[name])]
                ready = "collecting into"
            else:
                args = ["bridge", "--outbox", str(tmp_path / "outbox.db"), "--broker", url,
                        "--retry-base", "0.3", "--retry-cap", "1"]
                ready = "bridge running"
            procs[name] = p = spawn(args, env, log)
            _started(log, p, ready)
            with open(log, "a") as fh:
                fh.write(f"\n=== started {name}\n")

        # the first of each role starts on node 1 (the one that dies), the second on node 2
        start("col-a", (0, 1, 2))
        start("col-b", (1, 2, 0))
        start("bri-a", (0, 1, 2))
        start("bri-b", (1, 2, 0))

        samples = rows_needed(KINDS) + 150
        fleet = Fleet(tmp_path / "fleet", BOARDS, cl.mqtt_url(), None, faults=KINDS,
                      period=PERIOD, samples=samples, clean=1, credentials=users,
                      extra={"retry_ms": 20, "drain_ms": 90000,
                             "backoff": {"min_ms": 200, "max_ms": 2000}})
        fleet.start()

        def stored():
            c = sqlite3.connect(db, timeout=30)
            try:
                return c.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
            except sqlite3.OperationalError:
                return 0
            finally:
                c.close()

        wait_until(lambda: stored() >= 40 * BOARDS, timeout=60, what="samples flowing")
        cl.kill_node(0)  # -9: the boards' node, col-a's and bri-a's node, the queues' leader
        t_kill = time.monotonic()
        wait_until(lambda: stored() >= 80 * BOARDS, timeout=60,
                   what="samples flowing again through the two surviving nodes")
        t_recovered = time.monotonic() - t_kill
        def received(name):
            import urllib.request

            text = urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/metrics",
                                          timeout=5).read().decode()
            return sum(float(v) for v in re.findall(
                r'^edgewatch_messages_received_total\{kind="telemetry"\} (\S+)', text, re.M))

        # col-a, moved to a surviving node, shares the work (the counter grows per batch)
        n0 = received("col-a")
        wait_until(lambda: received("col-a") > n0, timeout=20, step=0.2,
                   what="col-a receiving on a surviving node")
        time.sleep(0.7)  # inside its 1.5 s batch
        # frozen, each keeps taking deliveries it never acknowledges; then -9: RabbitMQ
        # must hand those to the other instance
        for name in ("col-a", "bri-a"):
            procs[name].send_signal(signal.SIGSTOP)
        time.sleep(2)
        _kill(procs["col-a"])
        _kill(procs["bri-a"])
        cl.restart_node(0)
        start("col-a", (0, 1, 2))
        start("bri-a", (0, 1, 2))
        members = cl.running_nodes(0)
        assert len(members) == 3, members

        assert fleet.wait(timeout=samples * PERIOD * 4 + 120), "boards did not finish"
        done = {}
        for d in fleet.devices:
            m = next((DONE.search(ln) for ln in reversed(d.log) if DONE.search(ln)), None)
            assert m, f"{d.device}: no 'app: done' line:\n" + "\n".join(d.log[-20:])
            n_samples, n_alerts, sent, left, dropped, next_seq = map(int, m.groups())
            assert left == 0 and dropped == 0, (d.device, m.group(0))
            done[d.device] = (sent, next_seq, n_alerts)
        total = sum(s for s, _, _ in done.values())

        def rows():
            c = sqlite3.connect(db, timeout=30)
            try:
                tel = c.execute("SELECT device, seq FROM telemetry").fetchall()
                al = c.execute("SELECT device, seq, rule FROM alerts").fetchall()
            finally:
                c.close()
            return tel, al

        wait_until(lambda: sum(map(len, rows())) >= total, timeout=60,
                   what=f"all {total} PUBACKed messages stored")
        n_alerts = sum(a for _, _, a in done.values())
        wait_until(lambda: len(sink.requests) >= n_alerts, timeout=60, what=f"{n_alerts} SMS")
        time.sleep(3)  # a late duplicate would show by now
        tel, al = rows()
        for dev, (sent, next_seq, alerts) in done.items():
            seqs = sorted([s for d, s in tel if d == dev] + [s for d, s, _ in al if d == dev])
            # every PUBACKed sample and alert stored once: seq 0..next_seq-1, none missing
            assert len(seqs) == sent == next_seq, (dev, sent, next_seq, len(seqs))
            assert seqs == list(range(next_seq)), f"{dev}: lost or doubled seqs"
            assert sum(1 for d, _, _ in al if d == dev) == alerts, dev
        want = Counter((d, r) for d, _, r in al)
        got = Counter(RULE.match(r["Body"]).groups() for r in sink.requests)
        assert got == want, (got - want, want - got)  # each alert one SMS, none twice
        assert all(r["auth_ok"] for r in sink.requests)
        assert n_alerts >= 3 * (BOARDS - 1)  # the faulty boards did alert
        logs = "".join((tmp_path / f"{n}.log").read_text() for n in procs)
        assert "Traceback" not in logs
        for pw in users.values():
            assert pw not in logs
        assert cl.state["password"] not in logs
        redelivered = sum(int(x) for x in re.findall(r'"count": (\d+)', logs))  # replays
        print(f"\ncluster test: {total} messages from {BOARDS} boards, {n_alerts} SMS, "
              f"{redelivered} replays skipped, flow back {t_recovered:.1f} s after the "
              f"node kill, {time.monotonic() - t_start:.0f} s in all")
        for name in procs:
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(30) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    finally:
        if fleet is not None:
            fleet.stop()
        for p in procs.values():
            _kill(p)
        cl.down()
        sink.stop()


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory):
    cl = hc.Cluster(tmp_path_factory.mktemp("small") / "cluster")
    try:
        cl.up({"gh-01": "pw-one", "gh-02": "pw-two", "sim-01": "pw-sim-secret"})
        yield cl
    finally:
        cl.down()


def test_device_user_may_not_publish_as_another_device(small_cluster):
    """The Mosquitto ACL on the cluster: a board's account reaches only its own topics."""
    import paho.mqtt.client as mqtt

    cl = small_cluster
    got = []

    def client(user, pw, port, cid):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
        c.username_pw_set(user, pw)
        c.on_connect = lambda *a: got.append((cid, str(a[3])))
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        return c

    bad = client("gh-01", "wrong", cl.mqtt_port(1), "gh-01")
    wait_until(lambda: any(c == "gh-01" for c, _ in got), what="CONNACK")
    assert got[-1][1] != "Success"
    bad.loop_stop()
    a = client("gh-01", "pw-one", cl.mqtt_port(2), "gh-01")
    wait_until(lambda: a.is_connected(), what="gh-01 connected")
    a.publish("edgewatch/gh-01/telemetry", b"{}", qos=1).wait_for_publish(5)
    a.publish("edgewatch/gh-02/telemetry", b"{}", qos=1)
    wait_until(lambda: not a.is_connected(), what="takeover publish refused")
    a.loop_stop()

    def counts():
        out = cl.ctl(0, "list_queues", "name", "messages", "--formatter", "json")
        return {q["name"]: q["messages"] for q in json.loads(out[out.index("["):])}

    # only its own message got in (queue figures are refreshed every few seconds)
    wait_until(lambda: counts()["edgewatch.collector"] == 1, timeout=20, step=1,
               what="gh-01's one message in the collector queue")
    time.sleep(2)
    assert counts()["edgewatch.collector"] == 1


def test_signed_model_published_through_another_node_reaches_the_board(small_cluster, tmp_path):
    """OTA on the cluster: retained messages are node-local, but the board's persistent
    session is a quorum queue, so a model published through node 3 reaches a board on node 1."""
    import subprocess

    from hostkit import edgewatch

    cl = small_cluster
    key = "5e1f0c2a9b8d7e6f11223344556677889900aabbccddeeff0011223344556677"
    fleet = Fleet(tmp_path / "fleet", 1, cl.mqtt_url(), None, faults=[], period=0.2,
                  samples=0, clean=1, credentials={"sim-01": "pw-sim-secret"},
                  extra={"ota_key": key})
    fleet.start()
    try:
        wait_until(lambda: any(f"mqtt connected to 127.0.0.1:{cl.mqtt_port(0)}" in ln
                               for ln in fleet.devices[0].log), timeout=60,
                   what="the board on node 1")
        time.sleep(1)  # its session (and model subscription) exists
        url = f"mqtt://edgewatch:{cl.state['password']}@127.0.0.1:{cl.mqtt_port(2)}"
        r = subprocess.run(edgewatch("publish-model", "--model", str(hc.Path(__file__).parents[1]
                                                                    / "golden" / "model.ewb"),
                                     "--device", "sim-01", "--broker", url, "--wait-s", "40"),
                           env=service_env(EDGEWATCH_OTA_KEY=key), capture_output=True,
                           text=True, timeout=90, cwd=tmp_path)
        assert r.returncode == 0 and "sim-01: model" in r.stdout and " ok" in r.stdout, (
            r.stdout, r.stderr, fleet.devices[0].log[-15:])
    finally:
        fleet.stop()


def test_scorer_on_the_cluster_one_active_and_a_standby_that_takes_over(small_cluster, tmp_path,
                                                                       tiny_model_dir):
    """`edgewatch score --broker amqp://...`: two scorers on the scorer's quorum queue, one
    active at a time (each board's history lives in one process); a board publishes through
    node 2, the alerts reach an MQTT subscriber on node 3 and equal the host scorer's; the
    active scorer is killed with -9 and the standby scores what follows."""
    import threading

    import paho.mqtt.client as mqtt
    from edgewatch.core.schema import parse

    from tests.services.test_scoring import _host_alerts, _series

    cl = small_cluster
    pw = cl.state["password"]
    env = service_env()
    scorers = []
    for name in ("score-a", "score-b"):
        log = tmp_path / f"{name}.log"
        scorers.append((spawn(["score", "--model", str(tiny_model_dir), "--broker", cl.amqp_url()],
                              env, log), log))
        wait_until(lambda log=log: "scoring with model" in log.read_text() or scorers[-1][0].poll(),
                   timeout=60, what=f"{name} consuming")
        assert scorers[-1][0].poll() is None, log.read_text()[-1500:]
    got, lock = [], threading.Lock()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch-scorer")
    sub.username_pw_set("edgewatch", pw)
    sub.on_message = lambda c, u, m: (lock.acquire(), got.append(m), lock.release())
    sub.connect("127.0.0.1", cl.mqtt_port(2))
    sub.subscribe("edgewatch/+/alert", 1)
    sub.loop_start()
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gh-01")
    dev.username_pw_set("gh-01", "pw-one")
    dev.connect("127.0.0.1", cl.mqtt_port(1))
    dev.loop_start()

    def send(x, first_seq):
        for i, (t, h) in enumerate(x):
            body = {"v": 1, "device": "gh-01", "seq": first_seq + i, "t": None,
                    "values": {"temperature": t, "humidity": h}, "pred": None, "band": None,
                    "anomaly": False, "faults": [], "model": None}
            dev.publish("edgewatch/gh-01/telemetry", json.dumps(body), qos=1).wait_for_publish(5)

    try:
        time.sleep(1)  # the subscription is bound
        x = _series(240)
        want = [(a["sample"], a["channel"]) for a in _host_alerts(tiny_model_dir, x)]
        assert want
        send(x, 0)
        wait_until(lambda: len(got) >= len(want), timeout=60, what="the active scorer's alerts")
        time.sleep(1)
        with lock:
            recs = [parse(m.topic, m.payload) for m in got]
        assert sorted((r.sample, r.channel) for r in recs) == sorted(want)  # no doubles
        logs = [log.read_text() for _, log in scorers]
        active = [i for i in (0, 1) if " alert gh-01 sample " in logs[i]]
        assert len(active) == 1, "exactly one scorer is active"
        _kill(scorers[active[0]][0])
        # the standby starts from an empty history: the same series again, as new samples
        n = len(got)
        send(x, 1000)
        standby = scorers[1 - active[0]][1]
        wait_until(lambda: len(got) >= n + len(want), timeout=90, what="the standby's alerts")
        assert " alert gh-01 sample " in standby.read_text()
        with lock:
            later = sorted((parse(m.topic, m.payload).sample - 1000, parse(m.topic, m.payload).channel)
                           for m in got[n:])
        assert later == sorted(want)
    finally:
        dev.loop_stop()
        sub.loop_stop()
        for p, _ in scorers:
            _kill(p)


def test_a_board_cannot_knock_another_off_the_cluster_with_its_client_id(small_cluster, tmp_path):
    """RabbitMQ lets a new connection with a known client id replace the old one, across the
    whole cluster, whoever logs in. The firmware's client id carries a suffix derived from
    its own password (firmware/link.py client_id): another board's account, trying the
    device id and random suffixes through another node, knocks the board off 0 times."""
    import secrets

    import paho.mqtt.client as mqtt

    cl = small_cluster
    fleet = Fleet(tmp_path / "fleet", 1, cl.mqtt_url(), None, faults=[], period=0.2,
                  samples=0, clean=1, credentials={"sim-01": "pw-sim-secret"})
    fleet.start()
    log = fleet.devices[0].log
    try:
        wait_until(lambda: any("mqtt connected" in ln for ln in log), timeout=60,
                   what="the board connected")
        time.sleep(1)
        answers = []
        for cid in ["ew-sim-01"] + [f"ew-sim-01-{secrets.token_hex(8)}" for _ in range(4)]:
            a = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
            a.username_pw_set("gh-02", "pw-two")
            a.on_connect = lambda c, u, f, rc, p=None: answers.append(str(rc))
            a.connect("127.0.0.1", cl.mqtt_port(1), keepalive=5)
            n = len(answers)
            a.loop_start()
            wait_until(lambda n=n: len(answers) > n, timeout=20, what="CONNACK")
            time.sleep(1)
            a.disconnect()
            a.loop_stop()
        time.sleep(2)
        assert len(answers) == 5
        connects = [ln for ln in log if "mqtt connected" in ln]
        assert len(connects) == 1 and not any("link: mqtt" in ln and "failed" in ln for ln in log), \
            log[-10:]
    finally:
        fleet.stop()


def test_home_assistant_on_any_node_gets_the_discovery_configs(small_cluster, tmp_path):
    """RabbitMQ keeps a retained message on the node it came through and delivers none to a
    wildcard subscription, and nothing published over AMQP is retained: Home Assistant
    (homeassistant/#) would never see a config. The collector on the cluster publishes the
    configs over MQTT through --discovery-broker and again on Home Assistant's birth message;
    Home Assistant on another node, started after the board's first sample, gets them. A
    collector on the cluster without the option says discovery is off."""
    import threading

    import paho.mqtt.client as mqtt

    cl = small_cluster
    node = f"mqtt://127.0.0.1:{cl.mqtt_port(2)}"
    log = tmp_path / "collect.log"
    col = spawn(["collect", "--db", f"sqlite:///{tmp_path / 'ew.db'}", "--broker", cl.amqp_url(),
                 "--discovery-broker", node], service_env(), log)
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gh-02-disco")
    dev.username_pw_set("gh-02", "pw-two")
    got, lock = [], threading.Lock()
    ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha")
    ha.username_pw_set("edgewatch", cl.state["password"])
    ha.on_message = lambda c, u, m: (lock.acquire(), got.append(m), lock.release())
    try:
        wait_until(lambda: "collecting into" in log.read_text() or col.poll() is not None,
                   timeout=60, what="collector started")
        assert col.poll() is None, log.read_text()[-1500:]
        dev.connect("127.0.0.1", cl.mqtt_port(0))
        dev.loop_start()
        body = {"v": 1, "device": "gh-02", "seq": 1, "t": None,
                "values": {"temperature": 21.5, "humidity": 40.0}, "pred": None, "band": None,
                "anomaly": False, "faults": [], "model": None}
        dev.publish("edgewatch/gh-02/telemetry", json.dumps(body), qos=1).wait_for_publish(10)
        wait_until(lambda: "new column temperature" in log.read_text(), timeout=30,
                   what="the sample stored")
        # Home Assistant starts now, on node 1: subscribes, then sends its birth message
        ha.connect("127.0.0.1", cl.mqtt_port(1))
        ha.loop_start()
        ha.subscribe("homeassistant/#", 1)
        time.sleep(1)
        ha.publish("homeassistant/status", "online", qos=1)

        def configs():
            with lock:
                return [m for m in got if "/gh-02/" in m.topic and m.topic.endswith("/config")]

        def both():  # each channel's config (one may come twice: at the first sample and
            # again on the birth message, before the other's first arrives)
            topics = {m.topic for m in configs()}
            return any("temperature" in t for t in topics) and any("humidity" in t for t in topics)

        wait_until(both, timeout=30, what="discovery configs of both channels")
        cfg = json.loads(next(m.payload for m in configs() if "temperature" in m.topic))
        assert cfg["state_topic"].startswith("edgewatch/gh-02/")
    finally:
        dev.loop_stop()
        ha.loop_stop()
        _kill(col)
    plain_log = tmp_path / "collect-plain.log"
    plain = spawn(["collect", "--db", f"sqlite:///{tmp_path / 'ew2.db'}", "--broker",
                   cl.amqp_url()], service_env(), plain_log)
    try:
        wait_until(lambda: "discovery is off" in plain_log.read_text() or plain.poll() is not None,
                   timeout=60, what="the warning of a collector without --discovery-broker")
    finally:
        _kill(plain)
