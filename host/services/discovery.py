"""Home Assistant MQTT discovery: a board's channels, anomaly flag, status and diagnostics.

For each device the host publishes retained per-component configs under
``homeassistant/<component>/<device>/<object>/config`` (docs/messages.md), in the
schema of Home Assistant 2025.10 and later: each entity carries ``unique_id``,
``default_entity_id`` (``<component>.<id>``; ``object_id`` is refused from 2026.4),
the ``origin`` (edgewatch and its version) and the ``device`` (``sw_version`` is
the firmware version from the board's retained status):

- one ``sensor`` per channel, reading ``values.<channel>`` of the telemetry;
- a ``binary_sensor`` ``anomaly`` (device class *problem*) from the telemetry's flag;
- diagnostic entities (``entity_category: diagnostic``) from the retained status:
  ``status`` (*connectivity*), free heap, outbox depth, dropped records, model id.

Every entity but ``status`` uses the status topic as its availability, so a board
that drops off shows as unavailable. The collector calls :func:`publish` the first
time it stores a device's telemetry, and again when its channels or firmware change.
"""

from __future__ import annotations

import json
import re

from edgewatch.core.schema import DEFAULT_PREFIX

DISCOVERY_PREFIX = "homeassistant"
# Known channels get Home Assistant's device class and unit; others are plain sensors.
KNOWN = {
    "temperature": ("temperature", "°C"),
    "humidity": ("humidity", "%"),
    "pressure": ("pressure", "hPa"),
    "co2": ("carbon_dioxide", "ppm"),
}
# status field -> (name, extra config) of its diagnostic sensor
DIAGNOSTICS = {
    "heap_free": ("free heap", {"device_class": "data_size", "unit_of_measurement": "B",
                                "state_class": "measurement"}),
    "outbox": ("outbox depth", {"state_class": "measurement", "icon": "mdi:tray-full"}),
    "dropped": ("dropped records", {"state_class": "total_increasing", "icon": "mdi:delete-alert"}),
    "model": ("model id", {"icon": "mdi:brain"}),
}


HA_STATUS = "homeassistant/status"  # Home Assistant's birth ("online") and last will


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgewatch")
    except Exception:  # a checkout that is not installed
        return "unknown"


def _entity_id(component: str, device: str, obj: str) -> str:
    """``<component>.<device>_<obj>`` as Home Assistant writes entity ids (lower case, ``_``)."""
    return f"{component}." + re.sub(r"[^a-z0-9]+", "_", f"{device}_{obj}".lower()).strip("_")


def configs(device: str, channels, prefix: str = DEFAULT_PREFIX, model: str | None = None,
            fw: str | None = None, discovery_prefix: str = DISCOVERY_PREFIX) -> dict[str, dict]:
    """topic -> config payload of every entity of one device.

    ``model`` is accepted for older callers; the model id is a diagnostic entity
    read from the status, not a field of the device.
    """
    del model
    base = f"{prefix}/{device}"
    dev = {"identifiers": [f"edgewatch_{device}"], "name": device, "manufacturer": "edgewatch",
           "model": "edgewatch sensor board"}
    if fw:
        dev["sw_version"] = fw
    origin = {"name": "edgewatch", "sw_version": _version()}
    avail = {"availability": [{"topic": f"{base}/status",
                               "value_template": "{{ value_json.state }}",
                               "payload_available": "online", "payload_not_available": "offline"}]}

    def entity(component: str, obj: str, name: str, **cfg) -> tuple[str, dict]:
        body = {"name": name, "unique_id": f"edgewatch_{device}_{obj}",
                "default_entity_id": _entity_id(component, device, obj), **cfg,
                "device": dev, "origin": origin}
        return f"{discovery_prefix}/{component}/{device}/{obj}/config", body

    out: dict[str, dict] = {}
    for ch in channels:
        extra = {}
        if ch.lower() in KNOWN:
            extra["device_class"], extra["unit_of_measurement"] = KNOWN[ch.lower()]
        topic, cfg = entity("sensor", ch, ch, state_topic=f"{base}/telemetry",
                            value_template="{{ value_json['values']['" + ch + "'] }}",
                            state_class="measurement", **extra, **avail)
        out[topic] = cfg
    topic, cfg = entity("binary_sensor", "anomaly", "anomaly", state_topic=f"{base}/telemetry",
                        value_template="{{ 'ON' if value_json.anomaly else 'OFF' }}",
                        device_class="problem", json_attributes_topic=f"{base}/alert", **avail)
    out[topic] = cfg
    topic, cfg = entity("binary_sensor", "status", "status", state_topic=f"{base}/status",
                        value_template="{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
                        device_class="connectivity", entity_category="diagnostic")
    out[topic] = cfg
    for field, (name, extra) in DIAGNOSTICS.items():
        # the last will carries only the state: .get renders None, which Home Assistant
        # takes as "unknown" rather than an error
        topic, cfg = entity("sensor", field, name, state_topic=f"{base}/status",
                            value_template="{{ value_json.get('" + field + "') }}",
                            entity_category="diagnostic", **extra, **avail)
        out[topic] = cfg
    return out


def publish(client, device: str, channels, prefix: str = DEFAULT_PREFIX, **kw) -> list:
    """Publish the retained discovery configs of one device; the paho MessageInfo of each."""
    return [client.publish(topic, json.dumps(cfg, separators=(",", ":")), qos=1, retain=True)
            for topic, cfg in configs(device, channels, prefix, **kw).items()]
