"""Settings of the host services from the environment or a `.env` file; secrets redacted.

Every service reads its settings here: the MQTT broker (URL, user, password,
TLS files), the topic prefix, the database URL, and the notifiers' credentials
(Twilio, SMTP, webhook). Command-line options override the environment, which
overrides `.env` (python-dotenv, never overriding a variable already set).

Secrets (tokens, passwords, the password part of URLs) are never logged:
:func:`redact` masks every secret value this process knows of, and
:class:`RedactFilter` applies it to every log record.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from time import monotonic as _monotonic
from urllib.parse import unquote, urlparse

from edgewatch.core.errors import UserError
from edgewatch.core.schema import DEFAULT_PREFIX

SECRET_VARS = ("TWILIO_AUTH_TOKEN", "TWILIO_API_SECRET", "MQTT_PASSWORD", "SMTP_PASSWORD",
               "EDGEWATCH_WEBHOOK_TOKEN", "EDGEWATCH_MODEL_KEY", "EDGEWATCH_OTA_KEY", "OTA_KEY")
URL_VARS = ("EDGEWATCH_MQTT_URL", "EDGEWATCH_DB_URL", "EDGEWATCH_WEBHOOK_URL")
_extra_secrets: set[str] = set()
_lock = threading.Lock()


KEY_VAR = "EDGEWATCH_OTA_KEY"
# The names `edgewatch deploy` reads when it writes the key into a board's config.json.
KEY_ALIASES = ("EDGEWATCH_MODEL_KEY", "OTA_KEY")
MIN_KEY_HEX = 32  # 16 bytes, what the firmware's config accepts at least


def load_env(env_file: str | os.PathLike | None = None) -> Path | None:
    """Load `.env` (or ``env_file``) into os.environ without overriding set variables."""
    from dotenv import load_dotenv

    path = Path(env_file) if env_file else Path.cwd() / ".env"
    if env_file and not path.is_file():
        raise UserError(f"{path}: no such env file")
    if path.is_file():
        _check_env_file(path)
        load_dotenv(path, override=False)
        return path
    return None


def _check_env_file(path: Path) -> None:
    """UserError naming the file and line of the first line that is not ``NAME=value``."""
    from dotenv.parser import parse_stream

    try:
        with open(path, encoding="utf-8") as fh:
            bad = next((b for b in parse_stream(fh) if b.error), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    if bad is not None:
        # the line may hold a secret: name only what stands before '=' when it is a name
        name = bad.original.string.split("=", 1)[0].strip().removeprefix("export ").strip()
        where = f" ({name}=...)" if "=" in bad.original.string and name.isidentifier() else ""
        raise UserError(f"{path}:{bad.original.line}: not NAME=value{where}; "
                        "quote values with spaces, close every quote")


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, empty counted as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def add_secret(value: str | None) -> None:
    """Mask ``value`` wherever this process logs or prints it."""
    if value and len(value) >= 4:
        with _lock:
            _extra_secrets.add(value)


def _secrets() -> list[str]:
    out = set(_extra_secrets)
    for name in SECRET_VARS:
        v = os.environ.get(name)
        if v and len(v) >= 4:
            out.add(v)
    for name in URL_VARS:
        try:
            pw = urlparse(os.environ.get(name, "")).password
        except ValueError:  # 'mqtt://[::1': the command says so; its password is still masked
            m = re.match(r"[^:/?#]*://[^/?#@]*?:([^/?#@]*)@", os.environ.get(name, ""))
            pw = m.group(1) if m else None
        if pw and len(pw) >= 4:
            out.update({pw, unquote(pw)})
    out.update(url_secrets(os.environ.get("EDGEWATCH_WEBHOOK_URL", "")))
    return sorted(out, key=len, reverse=True)


def url_secrets(url: str) -> set[str]:
    """What in a webhook URL is a credential: its password, query, and a path or last path
    segment long enough to be a token (Slack, Teams and Discord carry it there). Short
    paths such as /alert are left alone: masking them would mangle every topic logged."""
    try:
        u = urlparse(url)
        parts = [u.password, u.query]
    except ValueError:
        return set()
    if len(u.path) >= 12:
        parts.append(u.path)
    last = u.path.rstrip("/").rsplit("/", 1)[-1]
    if len(last) >= 8:
        parts.append(last)
    return {p for part in parts if part and len(part) >= 4 for p in (part, unquote(part))}


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: no user, password, path or query. For webhook
    URLs, whose path and query are as secret as a password."""
    try:
        u = urlparse(url)
        host = u.hostname or ""
        port = u.port
    except ValueError:
        return "(unparsable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{u.scheme}://{host}" + (f":{port}" if port else "")


def redact(text: str) -> str:
    """``text`` with every known secret and any URL password replaced by ``***``."""
    for s in _secrets():
        text = text.replace(s, "***")
    return text


def safe_url(url: str) -> str:
    """A URL fit for a log line: the password replaced by ``***`` (also in a URL that
    does not parse, such as ``mqtt://u:pw@[::1``)."""
    try:
        pw = urlparse(url).password
    except ValueError:
        return re.sub(r"^([^:/?#]*://[^/?#@]*?:)[^/?#@]*@", r"\1***@", url, count=1)
    if pw:
        return url.replace(f":{pw}@", ":***@", 1)
    return url


class RedactFilter(logging.Filter):
    """Masks secrets in a log record's message and arguments before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string is still logged, not raised
            msg = str(record.msg)
        record.msg, record.args = redact(msg), None
        return True


# ---------------------------------------------------------------- MQTT

@dataclass
class MqttSettings:
    """Where and how a service connects to the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    prefix: str = DEFAULT_PREFIX
    amqp: str | None = None  # amqp://a,b,c: a RabbitMQ cluster's quorum queues (host/amqp.py)

    @property
    def url(self) -> str:
        if self.amqp:
            return safe_url(self.amqp)
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def add_mqtt_arguments(parser) -> None:
    """The broker options every service shares (defaults from the environment)."""
    g = parser.add_argument_group("MQTT broker")
    g.add_argument("--broker", "--mqtt", dest="mqtt", metavar="URL",
                   help="mqtt://host:port or mqtts://host:port (env EDGEWATCH_MQTT_URL; "
                        "default mqtt://127.0.0.1:1883), or a RabbitMQ cluster's "
                        "amqp://user:pw@node1,node2,node3: the role's quorum queue")
    g.add_argument("--username", help="MQTT user (env MQTT_USERNAME); password from env MQTT_PASSWORD")
    g.add_argument("--ca-file", help="CA certificate for mqtts:// (env MQTT_CA_FILE)")
    g.add_argument("--cert-file", help="client certificate (env MQTT_CERT_FILE)")
    g.add_argument("--key-file", help="client key (env MQTT_KEY_FILE)")
    g.add_argument("--prefix", help="topic prefix (env EDGEWATCH_PREFIX; default edgewatch)")
    parser.add_argument("--env-file", help="read settings from this file (default ./.env)")


def add_client_arguments(parser, log_level: str = "info") -> None:
    """The options of a service that talks to the broker: ``--log-level``, then the MQTT ones."""
    parser.add_argument("--log-level", default=log_level)
    add_mqtt_arguments(parser)


def topic_prefix(args) -> str:
    """--prefix, else EDGEWATCH_PREFIX, else edgewatch: topic levels without wildcards."""
    given = getattr(args, "prefix", None)
    raw = given or env("EDGEWATCH_PREFIX", DEFAULT_PREFIX)
    prefix = raw.strip("/")
    where = f"--prefix {raw!r}" if given else f"EDGEWATCH_PREFIX={raw!r}"
    if any(c in prefix for c in "+#\0"):
        raise UserError(f"{where}: MQTT wildcards (+, #) are not allowed in a topic prefix")
    return prefix


def check_group(group: str | None) -> str | None:
    """A shared-subscription group name (--group / EDGEWATCH_GROUP): ``$share/<group>/...``
    allows no level separator and no wildcard in it."""
    if group is not None and (not group or any(c in group for c in "/+#\0")):
        raise UserError(f"group {group!r} (--group or EDGEWATCH_GROUP): a group name cannot be "
                        "empty or contain /, or the MQTT wildcards + and #")
    return group


def mqtt_settings(args) -> MqttSettings:
    """MqttSettings from parsed options, then the environment; UserError on a bad URL or file."""
    load_env(getattr(args, "env_file", None))
    url = getattr(args, "mqtt", None) or env("EDGEWATCH_MQTT_URL", "mqtt://127.0.0.1:1883")
    if url.startswith(("amqp://", "amqps://")):
        from edgewatch.core.amqp import parse_amqp

        _nodes, user, pw = parse_amqp(url, getattr(args, "username", None) or env("MQTT_USERNAME"),
                                      env("MQTT_PASSWORD"))[:3]
        add_secret(pw)
        return MqttSettings(host=_nodes[0].host, port=_nodes[0].port, tls=_nodes[0].tls,
                            username=user, password=pw, amqp=url,
                            ca_file=getattr(args, "ca_file", None) or env("MQTT_CA_FILE"),
                            cert_file=getattr(args, "cert_file", None) or env("MQTT_CERT_FILE"),
                            key_file=getattr(args, "key_file", None) or env("MQTT_KEY_FILE"),
                            prefix=topic_prefix(args))
    try:
        u = urlparse(url if "://" in url else f"mqtt://{url}")
    except ValueError as exc:  # 'mqtt://[::1': an unclosed IPv6 bracket
        raise UserError(f"{safe_url(url)}: not an MQTT URL ({exc})") from None
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
        raise UserError(f"{safe_url(url)}: not an MQTT URL (mqtt://host:port or mqtts://host:port)")
    tls = u.scheme in ("mqtts", "ssl")
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError:
        raise UserError(f"{safe_url(url)}: bad port") from None
    s = MqttSettings(
        host=u.hostname, port=port, tls=tls,
        username=getattr(args, "username", None) or unquote(u.username or "") or env("MQTT_USERNAME"),
        password=unquote(u.password or "") or env("MQTT_PASSWORD"),
        ca_file=getattr(args, "ca_file", None) or env("MQTT_CA_FILE"),
        cert_file=getattr(args, "cert_file", None) or env("MQTT_CERT_FILE"),
        key_file=getattr(args, "key_file", None) or env("MQTT_KEY_FILE"),
        prefix=topic_prefix(args),
    )
    add_secret(s.password)
    for label, f in (("CA file", s.ca_file), ("certificate", s.cert_file), ("key", s.key_file)):
        if f and not Path(f).is_file():
            raise UserError(f"{f}: {label} not found")
    if s.cert_file and not s.key_file:
        raise UserError("--cert-file given without --key-file")
    return s


_held_ids: dict[str, int] = {}  # client id -> its open, locked file (until release or exit)


def service_client_id(role: str, state_dir: str | os.PathLike | None,
                      group: str | None = None) -> str:
    """The MQTT client id of one service instance: 128 random bits, unguessable.

    Created once in ``state_dir`` (file ``<role>-<group|solo>.client-id``, mode 0600)
    and read again at every start, so the broker's persistent session survives a
    restart or a kill -9. The running instance holds a lock on its file; a second
    instance with the same state directory and group takes the next file
    (``...-2.client-id``), so two instances never share an id and fight over the
    session. The id is registered as a secret: it is never logged. Without a state
    directory (in-process use, tests) each call gives a fresh random id.
    """
    import fcntl
    import secrets

    if state_dir is None:
        return f"ew-{role}-{secrets.token_hex(16)}"
    folder = Path(state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the state directory ({exc.strerror})") from None
    base = f"{role}-{group or 'solo'}"
    for n in range(1, 65):
        path = folder / (f"{base}.client-id" if n == 1 else f"{base}-{n}.client-id")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UserError(f"{path}: cannot open the client-id file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another running instance holds this one
            os.close(fd)
            continue
        old = os.read(fd, 200).decode("ascii", "replace").strip()
        if not (old.startswith(f"ew-{role}-") and len(old) == len(role) + 36):
            old = f"ew-{role}-{secrets.token_hex(16)}"
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, old.encode() + b"\n")
            os.fsync(fd)
        _held_ids[old] = fd
        add_secret(old)
        return old
    raise UserError(f"{folder}: 64 instances of {role} ({group or 'no group'}) already run here")


def release_client_id(client_id: str) -> None:
    """Unlock the file of a client id taken by :func:`service_client_id` (service stopped)."""
    fd = _held_ids.pop(client_id, None)
    if fd is not None:
        os.close(fd)


def close_client(client, client_id: str) -> None:
    """Disconnect a service's MQTT client, stop its network loop, free its client id."""
    client.disconnect()
    client.loop_stop()
    release_client_id(client_id)


class _RecvBuffer:
    """A connected socket read 64 KB at a time, for paho.

    paho reads each packet with ``recv(1)`` for its type, ``recv(1)`` per byte of its
    length and one ``recv`` for the rest: four system calls per telemetry message, a
    fifth of a subscriber's CPU. Here one ``recv`` fills a buffer and paho's calls are
    served from it; ``pending()`` tells paho's loop that bytes wait, as an SSL socket's
    does, so it reads them before it blocks in ``select``. Everything else is the socket's."""

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock):
        self._sock, self._buf, self._pos = sock, b"", 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(65536)  # BlockingIOError / SSLWantReadError: as paho expects
            if not buf:
                return buf  # closed
            self._buf, pos = buf, 0
        out = buf[pos:pos + n]
        self._pos = pos + len(out)
        return out

    def pending(self) -> int:
        more = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + more

    def __getattr__(self, name):
        return getattr(self._sock, name)


_CLIENT = None


def _client_class():
    """paho's Client reading through :class:`_RecvBuffer`, and taking every packet already
    buffered in one pass of its loop (up to 1,000) instead of one per ``select``."""
    global _CLIENT
    if _CLIENT is None:
        import paho.mqtt.client as mqtt

        class Client(mqtt.Client):
            _filtered = False  # message_callback_add used: paho's own dispatch

            def _create_socket(self):
                return _RecvBuffer(super()._create_socket())

            def message_callback_add(self, sub, callback):
                self._filtered = True
                return super().message_callback_add(sub, callback)

            def _handle_publish(self):
                # A QoS 0/1 PUBLISH of MQTT 3.1.1 to on_message, as paho does, without its
                # three struct unpacks (each a copy of the payload), two debug-log
                # formattings and the filtered-callback match per message: about a sixth
                # of a subscriber's CPU. Anything else goes to paho's own.
                header = self._in_packet["command"]
                qos = (header & 0x06) >> 1
                packet = self._in_packet["packet"]
                if (qos == 2 or self._filtered or self._protocol == mqtt.MQTTv5
                        or len(packet) < 3):
                    return super()._handle_publish()
                pos = 2 + ((packet[0] << 8) | packet[1])
                mid = 0
                if qos:
                    if pos + 2 > len(packet):
                        return super()._handle_publish()
                    mid = (packet[pos] << 8) | packet[pos + 1]
                topic = bytes(packet[2:pos])
                if not topic or pos > len(packet):
                    return super()._handle_publish()  # malformed: paho says so
                msg = mqtt.MQTTMessage(mid, topic)
                msg.qos, msg.retain, msg.dup = qos, bool(header & 1), bool(header & 8)
                msg.payload = bytes(packet[pos + (2 if qos else 0):])
                msg.timestamp = _monotonic()
                on_message = self.on_message
                if on_message:
                    with self._in_callback_mutex:
                        try:
                            on_message(self, self._userdata, msg)
                        except Exception as err:
                            self._easy_log(mqtt.MQTT_LOG_ERR,
                                           "Caught exception in on_message: %s", err)
                            if not self.suppress_exceptions:
                                raise
                if qos == 1 and not self._manual_ack:
                    return self._send_puback(mid)
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

            def loop_read(self, max_packets: int = 1):
                rc = super().loop_read(max_packets)
                for _ in range(1000):
                    sock = self._sock
                    if rc or sock is None or not sock.pending():
                        break
                    rc = super().loop_read(1)
                return rc

        _CLIENT = Client
    return _CLIENT


def mqtt_client(s: MqttSettings, client_id: str, *, persistent: bool = False,
                manual_ack: bool = False, role: str | None = None, prefetch: int = 1000):
    """A paho client configured for ``s`` (auth, TLS); the caller connects it.

    With an amqp:// broker and a ``role``, a host/amqp.py client consuming the
    role's quorum queue ``<prefix>.<role>`` instead (same calls, manual acks).

    ``persistent`` keeps the session at the broker across reconnects (clean
    session off), so QoS 1 messages that arrive while the service is down, or
    that it received but did not acknowledge, are delivered again.
    """
    if s.amqp and role:
        from edgewatch.core.amqp import AmqpClient

        return AmqpClient(s.amqp, f"{s.prefix}.{role}", username=s.username,
                          password=s.password, prefetch=prefetch, ca_file=s.ca_file,
                          cert_file=s.cert_file, key_file=s.key_file)
    import paho.mqtt.client as mqtt

    c = _client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=not persistent, manual_ack=manual_ack)
    if s.username:
        c.username_pw_set(s.username, s.password)
    if s.tls:
        c.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file,
                  cert_reqs=ssl.CERT_REQUIRED)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(min_delay=1, max_delay=30)
    return c


_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type 4, remaining length 2, packet id


def ack_all(client, acks) -> None:
    """Acknowledge ``acks`` ((mid, qos) pairs, in order) on a manual-ack client.

    paho queues each PUBACK as a packet of its own: one wake-up of its network thread
    (a byte through its socket pair) and one ``send()`` per message, about a tenth of a
    collector's CPU per message. On a paho client with every ``qos`` 1, the batch's
    PUBACKs are queued as one write of the same bytes back to back (MQTT packets need
    no boundary on the stream): one wake-up and one ``send()`` for the batch. Anything
    else (QoS 2, the AMQP client, a paho without the queue this relies on) is acked one
    by one. Same guarantee either way: nothing is acked before the caller calls this."""
    acks = list(acks)
    queue = getattr(client, "_packet_queue", None)
    if (acks and queue is not None and getattr(client, "_manual_ack", False) is True
            and getattr(client, "_protocol", None) in (3, 4) and all(q == 1 for _, q in acks)):
        queue(0x40, b"".join([_PUBACK.pack(0x40, 2, mid) for mid, _ in acks]), 0, 0)
        return
    for mid, qos in acks:
        client.ack(mid, qos)


def service_client(s: MqttSettings, role: str, client_id: str | None,
                   state_dir: str | os.PathLike | None, group: str | None, prefetch: int):
    """``(client id, client)`` of a service that must not lose a message (collector, bridge).

    The id is ``client_id``, else :func:`service_client_id`'s (stable across restarts);
    the session is persistent and acknowledgements manual, so a message the service
    received but did not acknowledge (handled) is delivered again. Free the id with
    :func:`close_client`.
    """
    check_group(group)  # it names the client-id file and the $share/<group>/ topic
    client_id = client_id or service_client_id(role, state_dir, group)
    return client_id, mqtt_client(s, client_id, persistent=True, manual_ack=True, role=role,
                                  prefetch=prefetch)


def connect(client, s: MqttSettings, subscriptions: list[tuple[str, int]],
            timeout: float = 10.0) -> None:
    """Connect ``client`` (loop in a background thread) and subscribe, again after each reconnect.

    UserError with one line when the broker cannot be reached or refuses us
    (bad password, not authorised): a service should not start half-connected.
    """
    if hasattr(client, "queue"):  # host/amqp.py: the queue and its bindings are the subscription
        client.start(timeout)  # (at least each node's answer time: host/core/amqp.py)
        return
    ready, outcome, pending = threading.Event(), {}, {}

    def on_connect(c, _userdata, _flags, reason_code, _props=None):
        outcome["rc"] = reason_code
        if reason_code.is_failure or not subscriptions:
            ready.set()
            return
        # ready only once the broker has acknowledged the subscriptions: a message
        # published after connect() returns must reach us, not race our SUBSCRIBE
        _rc, mid = c.subscribe(list(subscriptions))
        pending[mid] = True
        logging.getLogger("edgewatch.mqtt").info(
            "connected to %s", s.url, extra={"subscriptions": ",".join(t for t, _ in subscriptions)})

    def on_subscribe(_c, _userdata, mid, reason_codes, _props=None):
        if pending.pop(mid, None) is None:
            return
        # Mosquitto grants every filter and applies its ACL on delivery; brokers
        # that refuse a filter (0x80) get it named in the log.
        refused = [t for (t, _), rc in zip(subscriptions, reason_codes, strict=False)
                   if rc.is_failure]
        if refused:
            logging.getLogger("edgewatch.mqtt").error(
                "%s: the broker refused the subscription to %s", s.url, ", ".join(refused))
        ready.set()

    def on_disconnect(_c, _userdata, _flags, reason_code, _props=None):
        if ready.is_set() and reason_code != 0:
            logging.getLogger("edgewatch.mqtt").warning("disconnected from %s (%s); reconnecting",
                                                        s.url, reason_code)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    try:
        client.connect(s.host, s.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"{s.url}: cannot connect to the MQTT broker: {exc}") from None
    client.loop_start()
    if not ready.wait(timeout):
        client.loop_stop()
        raise UserError(f"{s.url}: no answer from the MQTT broker within {timeout:.0f} s")
    if outcome["rc"].is_failure:
        client.loop_stop()
        raise UserError(f"{s.url}: the MQTT broker refused the connection: {outcome['rc']}")


def fleet_key(var: str | None = None) -> bytes:
    """The per-fleet signing key from the environment (``var``, else the usual names).

    Registered for redaction.
    Hex digits, as the board's config.json holds it (``ota_key``, unhexlified by
    the firmware), so host and board hash with the same bytes.
    """
    names = (var,) if var else (KEY_VAR, *KEY_ALIASES)
    name = next((n for n in names if env(n)), None)
    if name is None:
        raise UserError(f"{names[0]} is not set (in the environment or .env): "
                        "the fleet's model signing key is required")
    text = env(name).strip()
    add_secret(text)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UserError(f"{name}: expected hex digits (as in the boards' ota_key)") from None
    if len(text) < MIN_KEY_HEX:
        raise UserError(f"{name}: at least {MIN_KEY_HEX} hex digits (16 bytes) are needed")
    return key


def read_users(spec: str | None) -> dict[str, str]:
    """device -> password from a file of ``device:password`` lines (or ``a:pw,b:pw``)."""
    if not spec:
        return {}
    p = Path(spec)
    lines = p.read_text().splitlines() if p.is_file() else spec.split(",")
    out = {}
    for ln in lines:
        ln = ln.split("#")[0].strip()
        if not ln:
            continue
        dev, sep, pw = ln.partition(":")
        from edgewatch.core.schema import DEVICE_RE

        if not sep or not pw or not DEVICE_RE.fullmatch(dev):
            raise UserError(f"--users: {ln[:40]!r}: expected device:password")
        out[dev] = pw
    return out
