"""The private broker the other tests rely on: plain, password+ACL, TLS, stop/start."""

import ssl
import threading

import paho.mqtt.client as mqtt
from edgewatch.services.broker import DEVICE_ACL, Broker


def _client(user=None, pw=None, tls_ca=None, cert=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if user:
        c.username_pw_set(user, pw)
    if tls_ca:
        c.tls_set(ca_certs=tls_ca, certfile=cert[0] if cert else None,
                  keyfile=cert[1] if cert else None, cert_reqs=ssl.CERT_REQUIRED)
    return c


def _roundtrip(broker_port, pub, sub, topic, sub_topic="#"):
    got, ready = [], threading.Event()
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect("127.0.0.1", broker_port[1])
    sub.loop_start()
    sub.subscribe(sub_topic, qos=1)
    assert ready.wait(5)
    pub.connect("127.0.0.1", broker_port[0])
    pub.loop_start()
    info = pub.publish(topic, b"x", qos=1)
    info.wait_for_publish(5)
    for _ in range(50):
        if got:
            break
        threading.Event().wait(0.05)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return got


def test_plain_broker_roundtrip_and_restart_keeps_port(tmp_path):
    with Broker(tmp_path) as b:
        port = b.port
        assert _roundtrip((b.port, b.port), _client(), _client(), "edgewatch/d1/telemetry")
        b.stop()
        assert not b.running
        b.start()
        assert b.port == port
        assert _roundtrip((b.port, b.port), _client(), _client(), "edgewatch/d1/telemetry")


def test_acl_confines_device_to_its_own_topics(tmp_path):
    users = {"edgewatch": "hostpw", "dev1": "pw1"}
    with Broker(tmp_path, users=users, acl=DEVICE_ACL) as b:
        own = _roundtrip((b.port, b.port), _client("dev1", "pw1"), _client("edgewatch", "hostpw"),
                         "edgewatch/dev1/telemetry")
        assert own == [("edgewatch/dev1/telemetry", b"x")]
        other = _roundtrip((b.port, b.port), _client("dev1", "pw1"),
                           _client("edgewatch", "hostpw"), "edgewatch/dev2/telemetry")
        assert other == []


def test_wrong_password_is_refused(tmp_path):
    with Broker(tmp_path, users={"dev1": "pw1"}) as b:
        c = _client("dev1", "nope")
        rc = []
        c.on_connect = lambda cl, u, f, reason, p: rc.append(reason)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        for _ in range(100):
            if rc:
                break
            threading.Event().wait(0.05)
        c.loop_stop()
        assert rc and rc[0].is_failure


def test_tls_with_client_certificate(tmp_path):
    with Broker(tmp_path, tls=True, require_client_cert=True, tls_clients=["dev1"]) as b:
        got = _roundtrip((b.tls_port, b.port), _client(tls_ca=b.ca_file, cert=b.client_cert("dev1")),
                         _client(), "edgewatch/dev1/telemetry")
        assert got == [("edgewatch/dev1/telemetry", b"x")]
        # No client certificate: the broker must not accept the session.
        bad = _client(tls_ca=b.ca_file)
        accepted = []
        bad.on_connect = lambda cl, u, f, reason, p: accepted.append(not reason.is_failure)
        try:
            bad.connect("127.0.0.1", b.tls_port)
            bad.loop_start()
            threading.Event().wait(2)
            bad.loop_stop()
        except (ssl.SSLError, OSError):
            pass
        assert True not in accepted
