"""A service's intake from a RabbitMQ cluster: one quorum queue per role, competing consumers.

``--broker amqp://user:pw@a:5672,b:5672,c:5672`` makes `edgewatch collect` and
`edgewatch bridge` read their role's quorum queue (``<prefix>.collector``,
``<prefix>.bridge``; see host/cluster.py) instead of subscribing over MQTT. Every
instance of a role consumes the same queue, so RabbitMQ hands each message to one
of them; one that dies without acknowledging gets its messages redelivered to
another. :class:`AmqpClient` offers the part of paho's client the services use
(``on_message`` with ``.topic``/``.payload``/``.mid``/``.qos``, ``ack(mid, qos)``,
``publish``, ``disconnect``, ``loop_stop``), so the collector still acknowledges a
message only after its batch is committed and the bridge only after the alert is
in its outbox. A lost connection moves to the next node; acknowledgements of
deliveries from a dead connection are dropped (RabbitMQ redelivers those
messages, and the (device, seq) keys store or send each once).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from edgewatch.core.errors import UserError

NODE_TIMEOUT_S = 15.0  # a node's time to answer a connection (a service's start waits for each)

log = logging.getLogger("edgewatch.amqp")
logging.getLogger("pika").setLevel(logging.CRITICAL)  # its errors are ours to report, once


@dataclass
class AmqpNode:
    host: str
    port: int
    tls: bool


def parse_amqp(url: str, username: str | None = None, password: str | None = None):
    """(nodes, username, password, vhost) from amqp[s]://user:pw@host[:port],host[:port]/vhost.

    Credentials, scheme and vhost given once apply to every node; an entry may also
    be a whole URL of its own.
    """
    if not url.startswith(("amqp://", "amqps://")):
        raise UserError(f"{url.split('@')[-1][:60]}: not an amqp:// URL")
    tls = url.startswith("amqps://")
    rest = url.split("://", 1)[1]
    user_info, sep, hosts = rest.rpartition("@")
    vhost = "/"
    if "/" in hosts:
        hosts, _, v = hosts.partition("/")
        vhost = unquote(v) or "/"
    if sep:
        u, _, p = user_info.partition(":")
        username, password = unquote(u) or username, unquote(p) or password
    nodes = []
    for h in hosts.split(","):
        h = h.strip()
        if h.startswith(("amqp://", "amqps://")):
            h = h.split("://", 1)[1]
        if not h:
            continue
        pu = urlparse(f"//{h}")
        try:
            port = pu.port or (5671 if tls else 5672)
        except ValueError:
            raise UserError(f"{h}: bad port in the amqp:// URL") from None
        if not pu.hostname:
            raise UserError(f"{h!r}: no host in the amqp:// URL")
        nodes.append(AmqpNode(pu.hostname, port, tls))
    if not nodes:
        raise UserError("amqp:// URL without a host")
    return nodes, username, password, vhost


@dataclass
class Delivery:
    """What the services read from a paho MQTTMessage."""

    topic: str
    payload: bytes
    mid: tuple
    qos: int = 1


class AmqpClient:
    """Consume ``queue`` from the first reachable node; paho-like for the services."""

    def __init__(self, url: str, queue: str, *, username: str | None = None,
                 password: str | None = None, prefetch: int = 1000, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None):
        self.nodes, self.username, self.password, self.vhost = parse_amqp(url, username, password)
        self.queue, self.prefetch = queue, prefetch
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.on_message = None
        self._gen = 0  # which connection a delivery came on: tags restart on each
        self._conn = self._ch = None
        self._acks: list = []
        self._lock = threading.Lock()
        self._flush_queued = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._unreachable = False
        self.node: AmqpNode | None = None

    # ------------------------------------------------------------ connection thread
    def _params(self, node: AmqpNode):
        import pika

        ssl_options = None
        if node.tls:
            import ssl

            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            ssl_options = pika.SSLOptions(ctx, node.host)
        return pika.ConnectionParameters(
            host=node.host, port=node.port, virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username or "guest", self.password or ""),
            ssl_options=ssl_options, heartbeat=10, blocked_connection_timeout=30,
            # NODE_TIMEOUT_S: a node busy with thousands of MQTT connections took 5-7 s to
            # accept an AMQP connection on 2 cores (tools/bench_cluster.py, 10,000 boards); a dead node
            # refuses at once whatever this is
            connection_attempts=1, socket_timeout=NODE_TIMEOUT_S)

    def _run(self) -> None:
        import pika

        i, delay = 0, 0.5
        while not self._stop.is_set():
            node = self.nodes[i % len(self.nodes)]
            try:
                conn = pika.BlockingConnection(self._params(node))
                ch = conn.channel()
                ch.basic_qos(prefetch_count=self.prefetch)
                ch.queue_declare(self.queue, passive=True)
                with self._lock:
                    self._gen += 1
                    self._acks = []
                    self._flush_queued = False
                    self._conn, self._ch, self.node = conn, ch, node
                gen = self._gen
                ch.basic_consume(self.queue, lambda _c, m, _p, body, g=gen: self._deliver(g, m, body))
                log.info("consuming %s on %s:%d", self.queue, node.host, node.port)
                self._ready.set()
                delay = 0.5
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.2)
                self._flush()
                conn.close()
                return
            except pika.exceptions.ProbableAuthenticationError as exc:
                self._error = f"{node.host}:{node.port}: the broker refused the login ({exc})"
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._error = f"{node.host}:{node.port}: queue {self.queue}: {exc.reply_text}"
            except Exception as exc:  # connection refused/lost, node down: the next node
                why = str(exc) or repr(getattr(exc, "args", ("",))[0] if exc.args else "")
                self._error = f"{node.host}:{node.port}: {type(exc).__name__} {why}".strip()
            with self._lock:
                self._conn = self._ch = None
            if self._ready.is_set():
                log.warning("lost %s (%s); trying the next node", self.queue, self._error)
            i += 1
            if i % len(self.nodes) == 0 and not self._ready.is_set():
                self._unreachable = True  # every node tried once: start() gives up
            if i % len(self.nodes) == 0 or self._ready.is_set():
                self._stop.wait(delay)
                delay = min(delay * 2, 10)

    def _deliver(self, gen: int, method, body: bytes) -> None:
        topic = method.routing_key.replace(".", "/")
        if self.on_message is not None:
            self.on_message(self, None, Delivery(topic, body, (gen, method.delivery_tag)))

    def _flush(self) -> None:
        """On the connection thread: send the acknowledgements gathered so far."""
        with self._lock:
            acks, self._acks, self._flush_queued = self._acks, [], False
            ch = self._ch
        if ch is None or not ch.is_open:
            return
        for tag in sorted(acks):
            ch.basic_ack(tag)

    # ------------------------------------------------------------ paho-like API
    def ack(self, mid, _qos=1) -> None:
        """Acknowledge a delivery (any thread); ignored if its connection is gone."""
        gen, tag = mid
        with self._lock:
            if gen != self._gen or self._conn is None:
                return  # that channel died: RabbitMQ delivers the message again
            self._acks.append(tag)
            if self._flush_queued:
                return
            self._flush_queued = True
            conn = self._conn
        try:
            conn.add_callback_threadsafe(self._flush)
        except Exception:
            pass  # closing: unacknowledged, redelivered

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False):
        """Publish to amq.topic (what MQTT subscribers see); not retained on a cluster."""
        body = payload.encode() if isinstance(payload, str) else payload

        def send():
            if self._ch is not None and self._ch.is_open:
                self._ch.basic_publish("amq.topic", topic.replace("/", "."), body)

        with self._lock:
            conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(send)
            except Exception:
                pass

    def start(self, timeout: float = 30.0) -> None:
        """Connect (first reachable node) and consume; UserError if none can be used.

        Every node gets its full answer time once before this gives up, whatever ``timeout``
        says: a node busy with thousands of connections answers late, not never (the MQTT
        start's 10 s ended a collector with "no node of 3 usable: no answer" after a
        10,000-board burst on 2 cores); a refusal or a dead node still ends it at once."""
        timeout = max(timeout, NODE_TIMEOUT_S * len(self.nodes) + 5)
        self._thread = threading.Thread(target=self._run, name=f"amqp-{self.queue}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            err = self._error or ""
            if (time.monotonic() > deadline or self._unreachable or "refused the login" in err
                    or "queue" in err):
                self._stop.set()
                where = "" if len(self.nodes) == 1 else f" (no node of {len(self.nodes)} usable)"
                raise UserError(f"amqp: cannot consume {self.queue}{where}: {err or 'no answer'}")

    def disconnect(self) -> None:
        self._stop.set()

    def loop_stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
