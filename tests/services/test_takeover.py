"""Session takeover with a board's login against the shipped production broker config
(deploy/mosquitto/), real collector and bridge processes: nothing lost, nothing taken.

The attacker holds a stolen board's username and password *and* the services' client ids
(the worst case: they are 128 random bits nobody should know) and keeps connecting with
clean_session=False on both listeners while another board publishes samples and alerts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from edgewatch.core.settings import release_client_id, service_client_id
from edgewatch.core.store import Store
from edgewatch.services import broker as brokers
from figures import record
from hostkit import alert, service_env, spawn, telemetry, wait_until

N_SAMPLES, N_ALERTS = 2000, 100
BOARDS = {"gh-01": "pw-gh01-long", "gh-02": "pw-gh02-stolen"}
SERVICES = {"collector": "pw-collector", "bridge": "pw-bridge", "viewer": "pw-viewer"}


def _client(b, port, user, pw, cid, clean=True):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean)
    c.username_pw_set(user, pw)
    c.tls_set(ca_certs=b.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return c


def _attack(b, ids, stop, accepted):
    """Log in as gh-02 with each service's client id, persistent session, over and over."""
    while not stop.is_set():
        for port in (b.tls_port, b.port):
            for cid in ids:
                c = _client(b, port, "gh-02", BOARDS["gh-02"], cid, clean=False)
                ok = threading.Event()
                c.on_connect = lambda *a, ok=ok: ok.set() if not a[3].is_failure else None
                c.on_message = lambda *a: None
                try:
                    c.connect("127.0.0.1", port, keepalive=5)
                    c.loop_start()
                    if ok.wait(1.0):
                        accepted.append(port)
                        c.subscribe("edgewatch/#", 1)
                    time.sleep(0.3)
                finally:
                    c.loop_stop()
                    try:
                        c.disconnect()
                    except Exception:
                        pass


def test_board_login_cannot_take_a_service_session(tmp_path):
    b = brokers.production(tmp_path / "mq", BOARDS, SERVICES).start()
    procs = []
    try:
        common = dict(EDGEWATCH_MQTT_URL=f"mqtts://127.0.0.1:{b.port}", MQTT_CA_FILE=b.ca_file)
        (tmp_path / "col").mkdir()
        (tmp_path / "br").mkdir()
        procs.append(spawn(["collect", "--db", f"sqlite:///{tmp_path}/col/ew.db", "--no-discovery"],
                           service_env(MQTT_USERNAME="collector",
                                       MQTT_PASSWORD=SERVICES["collector"], **common),
                           tmp_path / "col" / "collector.log"))
        procs.append(spawn(["bridge", "--notify", "console", "--cooldown", "0",
                            "--max-per-minute", "0", "--db", "none"],
                           service_env(MQTT_USERNAME="bridge", MQTT_PASSWORD=SERVICES["bridge"],
                                       **common),
                           tmp_path / "br" / "bridge.log"))
        ids = [wait_until(lambda d=d: next(iter((tmp_path / d).glob("*.client-id")), None), 20,
                          what=f"{d} client id").read_text().strip() for d in ("col", "br")]
        assert all(re.fullmatch(r"ew-(collector|bridge)-[0-9a-f]{32}", i) for i in ids)
        wait_until(lambda: "storing to" in (tmp_path / "col" / "collector.log").read_text(), 20,
                   what="collector up")
        wait_until(lambda: "bridge" in (tmp_path / "br" / "bridge.log").read_text(), 20,
                   what="bridge up")

        stop, accepted = threading.Event(), []
        attacker = threading.Thread(target=_attack, args=(b, ids, stop, accepted), daemon=True)
        attacker.start()
        board = _client(b, b.tls_port, "gh-01", BOARDS["gh-01"], "ew-anything", clean=False)
        board.connect("127.0.0.1", b.tls_port, keepalive=10)
        board.loop_start()
        infos = []
        for i in range(N_SAMPLES):
            infos.append(board.publish("edgewatch/gh-01/telemetry",
                                       json.dumps(telemetry("gh-01", i)), qos=1))
            if i % (N_SAMPLES // N_ALERTS) == 0:
                infos.append(board.publish("edgewatch/gh-01/alert",
                                           json.dumps(alert("gh-01", 10**6 + i)), qos=1))
            if i % 50 == 0:
                time.sleep(0.1)  # ~4 s of traffic under attack
        for info in infos:
            info.wait_for_publish(30)
        assert all(info.is_published() for info in infos)  # the broker PUBACKed every one
        stop.set()
        attacker.join(10)
        board.loop_stop()
        board.disconnect()

        st = Store(f"sqlite:///{tmp_path}/col/ew.db", create=False)
        sms = tmp_path / "br" / "bridge.log"
        try:
            with contextlib.suppress(TimeoutError):  # counted below: the loss is the figure
                wait_until(lambda: st.count() == N_SAMPLES, 30, what="every sample stored")
                wait_until(lambda: sms.read_text().count("ALERT ") == N_ALERTS, 30,
                           what="every alert notified")
            time.sleep(0.5)
            stored, notified = st.count(), sms.read_text().count("ALERT ")
            record("samples PUBACKed but not stored", N_SAMPLES - stored)
            record("alerts PUBACKed but not notified", N_ALERTS - notified)
            assert stored == N_SAMPLES and st.count("alerts") == N_ALERTS
            assert notified == N_ALERTS
        finally:
            st.close()
        assert accepted and set(accepted) == {b.tls_port}  # never on the services' listener
        logs = "".join(p.read_text() for p in tmp_path.rglob("*.log"))
        assert not any(i in logs for i in ids)  # client ids never logged
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        b.stop()


def test_service_client_id_is_random_stable_and_one_per_running_instance(tmp_path):
    a = service_client_id("collector", tmp_path, "g")
    b2 = service_client_id("collector", tmp_path, "g")  # a second instance running alongside
    assert a != b2 and re.fullmatch(r"ew-collector-[0-9a-f]{32}", a)
    assert (tmp_path / "collector-g.client-id").stat().st_mode & 0o777 == 0o600
    release_client_id(a)
    release_client_id(b2)
    assert service_client_id("collector", tmp_path, "g") == a  # restarted: same session
    assert service_client_id("collector", tmp_path / "other", "g") != a  # another host/folder
    assert os.path.exists(tmp_path / "collector-g-2.client-id")


def test_a_services_login_cannot_take_a_boards_id(tmp_path):
    """Mosquitto has one client-id space for both listeners, and a board's id on its
    listener is its username (its device id, which anyone can read in the topics): the
    read-only viewer on the services' listener picking "gh-01", or another board picking it,
    is refused at CONNECT (clientid_prefixes), and the board is never knocked off. A viewer
    with an "ew-" id still reads the board's samples."""
    b = brokers.production(tmp_path / "mq", BOARDS, SERVICES).start()
    board = viewer = None
    try:
        drops, got = [], []
        board = _client(b, b.tls_port, "gh-01", BOARDS["gh-01"], "ew-gh-01-0123456789abcdef",
                        clean=False)
        board.on_disconnect = lambda *a: drops.append(a)
        up = threading.Event()
        board.on_connect = lambda *a: up.set()
        board.connect("127.0.0.1", b.tls_port, keepalive=10)
        board.loop_start()
        assert up.wait(10)
        answers = {}
        for port, user, cid in [(b.port, "viewer", "gh-01"), (b.port, "collector", "gh-01"),
                                (b.tls_port, "gh-02", "gh-01"), (b.port, "viewer", "")]:
            a = _client(b, port, user, {**SERVICES, **BOARDS}[user], cid, clean=not cid)
            rc = []
            a.on_connect = lambda c, u, f, r, p=None, rc=rc: rc.append(r)
            try:
                a.connect("127.0.0.1", port, keepalive=5)
                a.loop_start()
                wait_until(lambda rc=rc: rc, 10, what="CONNACK")
            except (OSError, TimeoutError):  # refused and closed before paho read it
                rc.append("closed")
            finally:
                a.loop_stop()
                a.disconnect()
            answers[(user, cid)] = rc[0]
        assert all(str(r) in ("Not authorized", "closed") or getattr(r, "is_failure", False)
                   for r in answers.values()), answers
        time.sleep(1.5)
        assert drops == []  # the board stayed connected throughout
        viewer = _client(b, b.port, "viewer", SERVICES["viewer"], "ew-viewer-dashboard")
        viewer.on_connect = lambda c, *a: c.subscribe("edgewatch/+/telemetry", 1)
        viewer.on_message = lambda _c, _u, m: got.append(m.topic)
        viewer.connect("127.0.0.1", b.port, keepalive=10)
        viewer.loop_start()
        time.sleep(1.0)
        board.publish("edgewatch/gh-01/telemetry", json.dumps(telemetry("gh-01", 1)), qos=1)
        wait_until(lambda: got, 10, what="the viewer reading the board's sample")
        assert drops == []
    finally:
        for c in (board, viewer):
            if c is not None:
                c.loop_stop()
                c.disconnect()
        b.stop()
