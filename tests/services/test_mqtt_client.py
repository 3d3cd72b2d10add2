"""The services' MQTT client (host/core/settings.py) against a real Mosquitto: the buffered
reads deliver every packet whole, over TCP and TLS, and the batched PUBACKs acknowledge
exactly the messages given, nothing before."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from edgewatch.core.settings import MqttSettings, ack_all, connect, mqtt_client
from edgewatch.services.broker import Broker
from hostkit import wait_until

PW = "client-test-pw"


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "mq", users={"svc": PW, "pub": PW}, tls=True) as b:
        yield b


def _settings(broker, tls: bool) -> MqttSettings:
    return MqttSettings(port=broker.tls_port if tls else broker.port, tls=tls, username="svc",
                        password=PW, ca_file=broker.ca_file if tls else None)


def _publisher(broker, payloads, topic="t/x") -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    c.username_pw_set("pub", PW)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        infos = [c.publish(topic, p, qos=1) for p in payloads]
        for i in infos:
            i.wait_for_publish(30)
    finally:
        c.disconnect()
        c.loop_stop()


class _Sub:
    """A persistent manual-ack subscriber; ``client.ack`` calls counted."""

    def __init__(self, broker, tls: bool, client_id: str = "svc-1"):
        self.got: list = []
        self.lock = threading.Lock()
        self.client = mqtt_client(_settings(broker, tls), client_id, persistent=True,
                                  manual_ack=True)
        self.single_acks = 0
        plain_ack = self.client.ack

        def counted(mid, qos):
            self.single_acks += 1
            return plain_ack(mid, qos)

        self.client.ack = counted
        self.client.on_message = self._on
        connect(self.client, _settings(broker, tls), [("t/#", 1)])

    def _on(self, _c, _u, msg):
        if msg.payload == b"tail00":
            time.sleep(0.5)  # the rest of the burst arrives meanwhile: one read takes it all
        with self.lock:
            self.got.append((msg.payload, msg.mid, msg.qos))

    def close(self):
        # a barrier: the broker answers this QoS 1 publish after it has read the PUBACKs
        # written before it (paho's disconnect alone may close the socket with the broker
        # yet to read them: they would be lost and the messages sent again, as after a crash)
        self.client.publish("flush/x", b"", qos=1).wait_for_publish(10)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("tls", [False, True])
def test_buffered_reads_deliver_every_packet_whole_in_order(broker, tls):
    # lengths around the 1-, 2- and 3-byte remaining-length encodings, an empty payload,
    # some larger than one 64 KB read, among many small ones (several packets per read)
    sizes = [0, 1, 120, 121, 122, 16_370, 16_371, 16_400, 70_000, 200_000]
    payloads = []
    for i in range(1500):
        n = sizes[i % len(sizes)] if i % 7 == 0 else 40 + i % 300
        payloads.append(bytes((i + j) % 251 for j in range(n)))
    sub = _Sub(broker, tls)
    try:
        _publisher(broker, payloads)
        wait_until(lambda: len(sub.got) >= len(payloads), timeout=60, what="all messages")
        assert [p for p, _, _ in sub.got] == payloads
        # a burst, then silence: packets left in the buffer after the socket went quiet
        # are read at once, not when the next byte (a keepalive, a minute later) wakes select
        burst = [b"tail%02d" % i for i in range(30)]
        _publisher(broker, burst)
        wait_until(lambda: len(sub.got) >= len(payloads) + len(burst), timeout=10,
                   what="the burst's last messages")
        assert [p for p, _, _ in sub.got[len(payloads):]] == burst
        ack_all(sub.client, [(m, q) for _, m, q in sub.got])
    finally:
        sub.close()


def test_batched_pubacks_acknowledge_exactly_those_given(broker):
    payloads = [b"m%04d" % i for i in range(400)]
    sub = _Sub(broker, tls=False)
    try:
        _publisher(broker, payloads)
        wait_until(lambda: len(sub.got) >= len(payloads), timeout=30, what="all messages")
        acked = sub.got[:250]
        ack_all(sub.client, [(m, q) for _, m, q in acked])
        assert sub.single_acks == 0  # one batched write, not paho's packet per message
    finally:
        sub.close()
    again = _Sub(broker, tls=False)  # the same session: what was not acked comes again
    try:
        wait_until(lambda: len(again.got) >= 150, timeout=30, what="redelivery")
        with again.lock:
            redelivered = sorted(p for p, _, _ in again.got)
        assert redelivered == payloads[250:]
        ack_all(again.client, [(m, q) for _, m, q in again.got])
    finally:
        again.close()
    third = _Sub(broker, tls=False)
    try:
        _publisher(broker, [b"last"])
        wait_until(lambda: third.got, timeout=30, what="a new message")
        assert [p for p, _, _ in third.got] == [b"last"]  # nothing older came back
    finally:
        third.close()


def test_a_service_waits_for_a_slow_cluster_node_and_gives_up_at_once_on_a_refusal():
    """On a RabbitMQ cluster (amqp://), a node that accepts the connection but answers late
    (busy with thousands of boards) gets its whole answer time before the service gives up
    (a 10 s start ended collectors after a 10,000-board burst); a refused connection (nothing
    listens there) ends the start at once, with the same one-line error."""
    import socket

    from edgewatch.core.amqp import NODE_TIMEOUT_S
    from edgewatch.core.errors import UserError
    from edgewatch.services.broker import free_port

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel completes the handshake) and never speaks AMQP
    try:
        for port, least, most in ((silent.getsockname()[1], NODE_TIMEOUT_S - 1, NODE_TIMEOUT_S + 10),
                                  (free_port(), 0.0, 3.0)):
            s = MqttSettings(amqp=f"amqp://svc:{PW}@127.0.0.1:{port}")
            client = mqtt_client(s, "svc-1", persistent=True, manual_ack=True, role="collector")
            t = time.monotonic()
            with pytest.raises(UserError, match=r"amqp: cannot consume edgewatch\.collector"):
                connect(client, s, [("edgewatch/+/telemetry", 1)])
            assert least <= time.monotonic() - t <= most, (port, time.monotonic() - t)
    finally:
        silent.close()
