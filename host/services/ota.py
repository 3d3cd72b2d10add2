"""Publish a signed model blob over the air: retained MQTT message on <prefix>/<device>/model.

The blob (``model.ewb`` of a model folder, a blob file, or a registry id with
``--registry``) is checked with the firmware's own parser and signed for each
board on its own: HMAC-SHA256 under that board's key, derived from the fleet
master key in the environment (``EDGEWATCH_OTA_KEY`` in hex, or ``.env``; never
printed or logged) and the device id (``training.blob.derive_key``; ``edgewatch
deploy`` writes the same derived key into the board's ``ota_key``), with an OTA
version inside the signed part (default: the current Unix time; ``--ota-version``)
that the board must see grow, and the key version (``EDGEWATCH_OTA_KEY_VERSION``,
default 1). So a blob opens one board only, and an older one is refused. It is
published retained at QoS 1, so a board that is offline now picks it up when it
next connects. ``--device``
targets one board, ``--fleet`` every board the collector's database knows.
``--wait-s`` then watches the boards' retained status until each reports the
new model id (or the error it refused it with). ``--clear`` removes the
retained model message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.core.schema import DEVICE_RE
from edgewatch.core.settings import (
    add_mqtt_arguments,
    env,
    fleet_key,
    load_env,
    mqtt_settings,
)

log = logging.getLogger("edgewatch.ota")


def add_arguments(p) -> None:
    """Options of ``edgewatch publish-model``."""
    p.add_argument("--model", help="model folder (its model.ewb), a blob file, or a registry id "
                                   "with --registry")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", action="append", metavar="ID",
                        help="device id (repeatable)")
    target.add_argument("--fleet", action="store_true",
                        help="every device in the collector's database (--db)")
    p.add_argument("--db", help="collector database URL for --fleet (env EDGEWATCH_DB_URL)")
    p.add_argument("--registry", help="model registry folder: resolves ids, records the deploy")
    p.add_argument("--wait-s", type=float, default=0.0,
                   help="wait this long for each board's status to report the new model")
    p.add_argument("--clear", action="store_true", help="remove the retained model message instead")
    p.add_argument("--ota-version", type=int, help="version signed into the blob; boards refuse "
                   "one not above what they accepted (default: the current Unix time)")
    add_mqtt_arguments(p)


# ---------------------------------------------------------------- pieces


def load_blob(model: str, registry: str | None = None) -> tuple[bytes, str | None]:
    """``(unsigned or signed blob bytes, registry id or None)`` for a folder, file or id."""
    p = Path(model)
    if p.is_dir():
        p = p / "model.ewb"
        if not p.is_file():
            raise UserError(f"{model}: no model.ewb in this folder (run edgewatch convert first)")
    if p.is_file():
        return p.read_bytes(), None
    if registry:
        from edgewatch.services.registry import Registry

        e = Registry(registry).verify(model)
        return e.blob(), e.id
    raise UserError(f"{model}: no such model folder or blob file")


def key_version(text: str | None = None) -> int:
    """The fleet master key's version (``text``, else ``EDGEWATCH_OTA_KEY_VERSION``, default 1)."""
    text = text or env("EDGEWATCH_OTA_KEY_VERSION", "1")
    try:
        kv = int(text)
    except ValueError:
        kv = 0
    if not 0 < kv < 2**16:
        raise UserError(f"EDGEWATCH_OTA_KEY_VERSION={text!r}: expected an integer 1-65535")
    return kv


def sign_blob(blob: bytes, key: bytes, device: str | None = None,
              ota_version: int | None = None) -> tuple[bytes, str]:
    """Check ``blob`` with the board's parser and sign it; ``(signed bytes, model id)``.

    With ``device``: signed for that board only, under its derived key, with
    ``ota_version`` (default: now) inside the signed part. Without: under ``key`` as is.
    An already-signed blob is accepted only when it verifies under ``key``.
    """
    from edgewatch.training.export import blob as tblob

    try:
        if tblob.is_signed(blob):
            spec = tblob.read(blob, key)
            if device is None:
                return bytes(blob), spec.model_id
        else:
            spec = tblob.read(blob)
        if device is None:
            signed = tblob.sign(blob, key)
            tblob.read(signed, key)  # what the board will check, checked here first
            return signed, spec.model_id
        kv = key_version()
        dkey = tblob.derive_key(key, device, kv)
        version = ota_version if ota_version is not None else int(time.time())
        if not 0 < version < 2**32:
            raise UserError(f"--ota-version {version}: expected 1 to 4294967295")
        signed = tblob.sign(blob, dkey, version, kv)
        tblob.read(signed, dkey)
    except tblob.BlobError as exc:
        raise UserError(f"model blob refused: {exc}") from None
    return signed, spec.model_id


def topic(prefix: str, device: str) -> str:
    """The retained model topic of one device."""
    if not DEVICE_RE.fullmatch(device or ""):
        raise UserError(f"--device {device!r}: 1-32 characters of A-Z a-z 0-9 _ -")
    return f"{prefix}/{device}/model"


def fleet_devices(db_url: str | None) -> list[str]:
    """Every device id the collector has seen."""
    url = db_url or env("EDGEWATCH_DB_URL")
    if not url:
        raise UserError("--fleet needs the collector's database: --db URL or EDGEWATCH_DB_URL")
    from edgewatch.core.store import Store

    store = Store(url)
    try:
        rows = store.query("SELECT DISTINCT device FROM {telemetry} UNION "
                           "SELECT device FROM {devices}")
    finally:
        store.close()
    devices = sorted({str(r[0]) for r in rows if r[0]})
    if not devices:
        raise UserError(f"{url}: no devices recorded yet")
    return devices


class Publisher:
    """One MQTT connection that publishes retained models and watches status replies."""

    def __init__(self, settings, client_id: str = "edgewatch-ota") -> None:
        from edgewatch.core.settings import connect, mqtt_client, service_client_id

        self.s = settings
        self.status: dict[str, dict] = {}
        self.models: dict[str, bytes] = {}  # the retained model of each device
        self._cond = threading.Condition()
        self.client = mqtt_client(settings, service_client_id("ota", None))  # unguessable
        self.client.on_message = self._on_message
        connect(self.client, settings, [(f"{settings.prefix}/+/status", 1),
                                        (f"{settings.prefix}/+/model", 1)])

    def _on_message(self, _c, _u, msg) -> None:
        if msg.topic.endswith("/model"):
            with self._cond:
                self.models[msg.topic.split("/")[-2]] = bytes(msg.payload)
            return
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(obj, dict):
            with self._cond:
                self.status[msg.topic.split("/")[-2]] = obj
                self._cond.notify_all()

    def publish(self, device: str, payload: bytes, timeout: float = 10.0) -> None:
        """Retained QoS 1 publish; returns once the broker acknowledged it."""
        info = self.client.publish(topic(self.s.prefix, device), payload, qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise UserError(f"{self.s.url}: the broker did not acknowledge the model for {device}")

    def wait_for(self, devices: list[str], model_id: str, timeout: float,
                 since: dict[str, dict] | None = None) -> dict[str, str]:
        """Per device: ``"ok"`` once its status reports ``model_id``, the status's error
        when it refused the model, or ``"timeout"``. ``since`` holds statuses seen
        before publishing, so an old error is not taken for a new one."""
        since = since or {}
        deadline = time.monotonic() + timeout
        out: dict[str, str] = {}
        with self._cond:
            while True:
                for d in devices:
                    st = self.status.get(d) or {}
                    fresh = st != since.get(d)
                    # Running it is what counts: a board sent the model it already runs
                    # may not publish again, and its old status may carry an old refusal.
                    if st.get("model") == model_id and (not st.get("error") or not fresh):
                        out[d] = "ok"
                    elif st.get("error") and fresh:
                        out[d] = str(st["error"])
                left = deadline - time.monotonic()
                if len(out) == len(devices) or left <= 0:
                    break
                self._cond.wait(left)
        return {d: out.get(d, "timeout") for d in devices}

    def snapshot(self, settle_s: float = 0.3) -> dict[str, dict]:
        """The statuses known now (retained ones arrive right after subscribing)."""
        time.sleep(settle_s)
        with self._cond:
            return dict(self.status)

    def close(self) -> None:
        """Disconnect cleanly."""
        self.client.disconnect()
        self.client.loop_stop()


def _retained_version(payload: bytes, key: bytes, device: str) -> int:
    """The OTA version of a retained model that this fleet key signed for ``device``, else 0
    (anything else on the topic, e.g. a forged blob, must not steer the next version)."""
    from edgewatch.training.export import blob as tblob

    try:
        tblob.read(payload, tblob.derive_key(key, device, key_version()))
    except (tblob.BlobError, ValueError):
        return 0
    return tblob.ota_version(payload) or 0


def publish_model(settings, devices: list[str], blob: bytes, key: bytes,
                  wait_s: float = 0.0, ota_version: int | None = None) -> tuple[str, dict[str, str]]:
    """Sign ``blob`` for each of ``devices`` and publish it; ``(model id, per-device outcome)``."""
    version = ota_version if ota_version is not None else int(time.time())
    for d in devices:
        topic(settings.prefix, d)  # every id checked before anything is published
    blobs = {d: sign_blob(blob, key, d, version) for d in devices}  # refused before connecting
    model_id = next(iter(blobs.values()))[1] if blobs else sign_blob(blob, key)[1]
    pub = Publisher(settings)
    try:
        before = pub.snapshot()  # statuses and retained models
        if ota_version is None:
            # newer than every model still retained for these devices too: two publishes
            # within one second must not carry the same version (the board refuses the
            # second as a rollback)
            last = [_retained_version(pub.models[d], key, d) for d in devices if d in pub.models]
            if last and max(last) >= version:
                version = max(last) + 1
                blobs = {d: sign_blob(blob, key, d, version) for d in devices}
        for d in devices:
            pub.publish(d, blobs[d][0])
            log.info("published model %s version %d (%d bytes) to %s", model_id, version,
                     len(blobs[d][0]), d)
        result = pub.wait_for(devices, model_id, wait_s, before) if wait_s > 0 else \
            {d: "published" for d in devices}
    finally:
        pub.close()
    return model_id, result


def run(args) -> int:
    """``edgewatch publish-model``: sign and publish, optionally wait for the boards."""
    load_env(getattr(args, "env_file", None))
    s = mqtt_settings(args)
    devices = fleet_devices(args.db) if args.fleet else list(args.device)
    if args.clear:
        pub = Publisher(s)
        try:
            for d in devices:
                pub.publish(d, b"")
        finally:
            pub.close()
        print(f"cleared the retained model of {', '.join(devices)}")
        return 0
    if not args.model:
        raise UserError("--model is required (a model folder, blob file or registry id)")
    key = fleet_key()
    blob, reg_id = load_blob(args.model, args.registry)
    if args.wait_s < 0:
        raise UserError(f"--wait-s {args.wait_s}: must not be negative")
    model_id, result = publish_model(s, devices, blob, key, args.wait_s, args.ota_version)
    if args.registry and reg_id:
        from edgewatch.services.registry import Registry

        reg = Registry(args.registry)
        for d, outcome in result.items():
            if outcome in ("ok", "published"):
                reg.mark_deployed(reg_id, "fleet" if args.fleet else d)
    for d, outcome in result.items():
        print(f"{d}: model {model_id} {outcome}")
    return 0 if all(o in ("ok", "published") for o in result.values()) else 1
