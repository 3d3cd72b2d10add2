"""WiFi + MQTT link that never blocks the sampling loop for long.

`service()` is called every loop turn: it brings WiFi up, then MQTT (umqtt.simple,
QoS 1, user/password, TLS with CA and optional client certificate, last will), each
attempt followed on failure by a bounded, growing, jittered pause (umqtt.robust
waits a fixed 2 s forever). Sockets get a short timeout so a dead peer costs
seconds, not the watchdog. Works with umqtt.simple 1.3/1.4 (`ssl=True, ssl_params`)
and 1.5+ (`ssl=<SSLContext>`).

A message on `file_topic` (the model) is not held in RAM: `_FileClient.wait_msg`
streams its payload through one small buffer into `file_path` and reports
`on_file(size, crc, err)`; a blob as one object of its full size does not fit next
to a running model at a 96 KB heap.
"""

import os
import random
import sys
import time
from binascii import crc32

import socket as _socket

from micropython import const

import umqtt.simple as _simple

_IPPROTO_TCP = const(6)  # the same numbers in Linux and lwIP
_TCP_NODELAY = const(1)


class Backoff:
    """Capped exponential backoff with 'equal jitter': delay in [d/2, d], d = min(max, min*2^n)."""

    def __init__(self, min_ms, max_ms):
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.n = 0

    def reset(self):
        self.n = 0

    def next_ms(self):
        """The pause before the next attempt; grows until max_ms."""
        d = self.min_ms << self.n if self.n < 24 else self.max_ms
        if d >= self.max_ms:
            d = self.max_ms
        else:
            self.n += 1
        half = d // 2
        return half + random.getrandbits(20) % (d - half + 1)


class _TimeoutSockets:
    """Stands in for the `socket` module inside umqtt so its sockets get a timeout
    (umqtt creates the socket itself, before connect)."""

    def __init__(self, timeout_s):
        self.timeout_s = timeout_s
        self.last = None  # the TCP socket under umqtt's (maybe TLS) socket

    def socket(self, *args):
        s = _socket.socket(*args)
        s.settimeout(self.timeout_s)
        try:
            # umqtt writes a PUBLISH in 4 small pieces; with Nagle each QoS 1 round trip
            # waits for the peer's delayed ACK (~40 ms): draining a backlog would crawl
            s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.last = s
        return s

    def getaddrinfo(self, *args):
        return _socket.getaddrinfo(*args)


class _SSLShim:
    """`ussl` for umqtt.simple 1.3/1.4: wraps with our SSLContext (CA + client cert)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def wrap_socket(self, sock, server_hostname=None, **_):
        return self.ctx.wrap_socket(sock, server_hostname=server_hostname)


def _read_der(path):
    # PEM or DER file -> DER bytes: not every port's mbedtls is built with PEM parsing
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"-----BEGIN"):
        return data
    from binascii import a2b_base64

    body = data.split(b"-----", 3)[2] if data.count(b"-----") >= 4 else b""
    body = body.split(b"-----END")[0]
    return a2b_base64(body.replace(b"\r", b"").replace(b"\n", b""))


def ssl_context(ca, cert=None, key=None):
    """Client SSLContext that requires the server's certificate to chain to `ca`
    (PEM or DER files; the client certificate and key are optional)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=_read_der(ca))
    if cert:
        ctx.load_cert_chain(_read_der(cert), _read_der(key))
    return ctx


def _ticks():
    return time.ticks_ms()


class _FileClient(_simple.MQTTClient):
    """umqtt's client with PUBLISH on `file_topic` received into a file, chunk by chunk.

    Uses only what umqtt.simple 1.3 to 1.6 share (`sock`, `_recv_len`, `cb`); every
    other packet is left to umqtt exactly as its own `wait_msg` does (PINGRESP eaten,
    any other opcode returned to `publish`/`subscribe`, which read the rest).
    """

    file_topic = None  # bytes
    file_path = None
    file_max = 0
    buf = None  # bytearray shared by every client of a Link: allocated once
    on_file = None  # (size, crc32, err or None)
    arm = None  # re-applies the socket timeout that setblocking(True) clears

    def wait_msg(self):
        sock = self.sock
        res = sock.read(1)
        sock.setblocking(True)
        if self.arm:
            self.arm()
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)
        op = res[0]
        if op == 0xD0:  # PINGRESP
            sock.read(1)
            return None
        if op & 0xF0 != 0x30:
            return op
        sz = self._recv_len()
        n = sock.read(2)
        n = n[0] << 8 | n[1]
        topic = sock.read(n)
        sz -= n + 2
        pid = 0
        if op & 6:
            pid = sock.read(2)
            pid = pid[0] << 8 | pid[1]
            sz -= 2
        if topic == self.file_topic:
            self._to_file(sz)
        else:
            self.cb(topic, sock.read(sz))
        if op & 6 == 2:  # QoS 1: acknowledged once the payload is safely in the file
            sock.write(b"\x40\x02" + bytes((pid >> 8, pid & 0xFF)))
        return op

    def _to_file(self, sz):
        # payload -> file_path through self.buf; over file_max: drained, nothing stored
        sock, buf = self.sock, self.buf
        mv = memoryview(buf)
        keep = sz <= self.file_max
        f = open(self.file_path, "wb") if keep and sz else None
        crc = 0
        left = sz
        try:
            while left:
                n = sock.readinto(buf, left if left < len(buf) else len(buf))
                if not n:
                    raise OSError(-1)  # peer closed (a timeout raises by itself)
                if f:
                    f.write(mv[:n])
                    crc = crc32(mv[:n], crc)
                left -= n
        except BaseException:
            if f:
                f.close()
                os.remove(self.file_path)
            raise
        if f:
            f.close()
        err = None if keep else "model: blob of %d bytes, at most %d fit" % (sz, self.file_max)
        self.on_file(sz, crc, err)


def client_id(device, password):
    """The board's MQTT client id: "ew-" and its device id, plus 16 hex digits derived from
    its password when it has one. A broker that lets a new connection with a known client id
    replace the old one (MQTT's rule; RabbitMQ applies it across a whole cluster) would let
    any board that knows another's id knock it off; this suffix cannot be guessed without the
    other board's password, and it stays the same across reboots, so the board's persistent
    session is found again. "ew-": the production Mosquitto accepts no other client id
    (deploy/mosquitto/edgewatch.conf clientid_prefixes)."""
    if not password:
        return "ew-" + device
    import hashlib
    from binascii import hexlify

    h = hashlib.sha256(b"edgewatch-client-id\0" + password.encode() + b"\0" + device.encode())
    return "ew-%s-%s" % (device, hexlify(h.digest()[:8]).decode())


def _ignore(topic, msg):
    # umqtt needs a callback to subscribe; every subscription of ours is a file topic
    pass


class Link:
    """Connection state machine, wired once through its constructor.

    `subscriptions`: topics subscribed (QoS 1) on every connect; `will`: (topic, payload)
    of the retained last will; `file`: (topic, path, max_bytes, on_file) — that topic's
    payload is received straight into the file, `on_file(size, crc, err)` told after; `on_connect()`
    is called after each connect (the app publishes its retained status)."""

    def __init__(self, cfg, wlan=None, log=print, subscriptions=(), will=None, file=None,
                 on_connect=None):
        self.cfg = cfg
        self.wlan = wlan
        self.log = log
        self.client = None
        self.up = False
        self.backoff = Backoff(cfg["backoff"]["min_ms"], cfg["backoff"]["max_ms"])
        self.client_id = client_id(cfg["device"], cfg["password"])
        self.next_try = _ticks()
        self.wifi_asked = False
        self.wifi_deadline = 0
        self.attempts = 0
        self.timeout_s = cfg["socket_timeout_ms"] / 1000
        self.subscriptions = list(subscriptions)
        # the subscription received into a file (the model): topic, path, size limit, callback
        self.file_topic, self.file_path, self.file_max, self.on_file = file or (None, None, 0, None)
        self._buf = bytearray(256)  # the file topic's receive buffer, for the board's life
        self.on_connect = on_connect
        self.will_topic, self.will = will or (None, None)
        self.last_io = _ticks()
        self.clock_at = _ticks()  # when NTP was last asked (at every wifi up, and daily)
        self._ctx = None
        if cfg["tls"]:
            self._ctx = ssl_context(cfg["ca"], cfg["client_cert"], cfg["client_key"])
        _simple.socket = self._sockets = _TimeoutSockets(self.timeout_s)
        if self._ctx is not None:
            sys.modules["ussl"] = _SSLShim(self._ctx)

    def _schedule(self, what, err):
        b = self.cfg["broker"]
        if what[0] == "m" and type(b) is list:  # MQTT failed: the next node of the list
            b.append(b.pop(0))
            self.cfg["host"], self.cfg["port"] = b[0][0], b[0][1]
        self.attempts += 1
        delay = self.backoff.next_ms()
        self.next_try = time.ticks_add(_ticks(), delay)
        self.log("link: %s failed (%s), attempt %d, next in %d ms" % (what, err, self.attempts, delay))

    def _wifi_ok(self):
        w = self.wlan
        if w is None or w.isconnected():
            if self.wifi_asked:
                self.wifi_asked = False
                self.log("link: wifi up %s" % (w.ifconfig()[0],))
                self._clock()
            elif w is not None and time.ticks_diff(_ticks(), self.clock_at) > _DAY_MS:
                self._clock()  # again daily: the board's RTC drifts seconds a day
            return True
        return False

    def _clock(self):
        self.clock_at = _ticks()
        _set_clock()

    def _new_client(self):
        c = self.cfg
        client = _FileClient(
            self.client_id, c["host"], c["port"], c["user"], c["password"], c["keepalive_s"])
        client.file_topic, client.file_path = self.file_topic, self.file_path
        client.file_max, client.on_file = self.file_max, self.on_file
        client.buf, client.arm = self._buf, self._arm
        if self._ctx is not None:
            if hasattr(client, "ssl_params"):  # umqtt.simple <= 1.4
                client.ssl = True
                client.ssl_params = {"server_hostname": c["host"]}
            else:
                client.ssl = self._ctx
        if self.will_topic:
            client.set_last_will(self.will_topic, self.will, retain=True, qos=1)
        client.set_callback(_ignore)
        return client

    def service(self):
        """Advance the connection (at most one short attempt) and read incoming messages."""
        if self.up:
            try:
                self._poll()
            except Exception as e:
                self.drop(e)
            return
        if time.ticks_diff(self.next_try, _ticks()) > 0:
            return
        if not self._wifi_ok():
            w = self.wlan
            if self.wifi_asked and time.ticks_diff(self.wifi_deadline, _ticks()) > 0:
                return  # still associating: look again next turn
            try:
                if self.wifi_asked:
                    self.wifi_asked = False
                    w.disconnect()
                    self._schedule("wifi", "no association in time")
                    return
                w.active(True)
                w.connect(self.cfg["wifi"]["ssid"], self.cfg["wifi"].get("password"))
                self.wifi_asked = True
                self.wifi_deadline = time.ticks_add(_ticks(), self.cfg["wifi"]["timeout_ms"])
            except Exception as e:
                self._schedule("wifi connect", e)
            return
        self._connect()

    def _connect(self):
        client = self._new_client()
        try:
            # on a cluster (a broker list) the session persists: RabbitMQ then keeps it in
            # a replicated queue; a clean one lives on one node and blocks the others
            client.connect(type(self.cfg["broker"]) is not list)
            self._arm()
            self.client = client
            for t in self.subscriptions:
                client.subscribe(t, qos=1)
            self.up = True
            self.last_io = _ticks()
            self.backoff.reset()
            self.attempts = 0
            self.log("link: mqtt connected to %s:%d" % (self.cfg["host"], self.cfg["port"]))
            if self.on_connect:
                self.on_connect()
        except Exception as e:
            self._close(client)
            self.client = None
            self.up = False
            self._schedule("mqtt connect", e)

    def _poll(self):
        c = self.client
        c.check_msg()
        self._arm()  # check_msg leaves the socket blocking
        ka = self.cfg["keepalive_s"]
        if ka and time.ticks_diff(_ticks(), self.last_io) > ka * 500:
            c.ping()
            self.last_io = _ticks()

    def _arm(self):
        # (re)apply the timeout on the TCP socket: a TLS socket has no settimeout, and
        # umqtt's setblocking(True) clears it on some ports
        self._sockets.last.settimeout(self.timeout_s)

    def _close(self, client):
        try:
            client.sock.close()
        except Exception:
            pass

    def close(self):
        """Close the connection (the app is built again: App.run)."""
        if self.client is not None:
            self._close(self.client)

    def drop(self, err):
        """Forget the connection after an error; reconnect with backoff."""
        if self.client is not None:
            self._close(self.client)
        self.client = None
        self.up = False
        self._schedule("mqtt", err)

    def publish(self, topic, payload, retain=False):
        """Publish with QoS 1; True once the broker's PUBACK arrived, False on any error."""
        if not self.up:
            return False
        try:
            self._arm()
            self.client.publish(topic, payload, retain, 1)
            self.last_io = _ticks()
            return True
        except Exception as e:
            self.drop(e)
            return False


_DAY_MS = 86400000


def _set_clock():
    # the board's clock starts at 2000-01-01; NTP makes `t` real (unix port: no ntptime)
    try:
        import ntptime

        ntptime.settime()
    except Exception:
        pass
