"""Home Assistant MQTT discovery: a board's channels, anomaly flag and status, no configuration.

For each device the host publishes retained configs under
``homeassistant/<component>/<device>/<object>/config`` (docs/messages.md):

- one ``sensor`` per channel, reading ``values.<channel>`` of the telemetry;
- a ``binary_sensor`` ``anomaly`` (device class *problem*) from the telemetry's flag;
- a ``binary_sensor`` ``status`` (device class *connectivity*) from the retained
  status and last will; every entity uses the same status as its availability,
  so a board that drops off shows as unavailable in Home Assistant.

The collector calls :func:`publish` the first time it stores a device's
telemetry (and again when its channels change), so boards appear on their own.
"""

from __future__ import annotations

import json

DISCOVERY_PREFIX = "homeassistant"
# Known channels get Home Assistant's device class and unit; others are plain sensors.
KNOWN = {
    "temperature": ("temperature", "°C"),
    "humidity": ("humidity", "%"),
    "pressure": ("pressure", "hPa"),
    "co2": ("carbon_dioxide", "ppm"),
}


def configs(device: str, channels, prefix: str = "edgewatch", model: str | None = None,
            fw: str | None = None, discovery_prefix: str = DISCOVERY_PREFIX) -> dict[str, dict]:
    """topic -> config payload of every entity of one device."""
    base = f"{prefix}/{device}"
    dev = {"identifiers": [f"edgewatch_{device}"], "name": device, "manufacturer": "edgewatch",
           "model": "edgewatch sensor board"}
    if fw:
        dev["sw_version"] = fw
    if model:
        dev["hw_version"] = f"model {model}"
    avail = {"availability_topic": f"{base}/status",
             "availability_template": "{{ value_json.state }}",
             "payload_available": "online", "payload_not_available": "offline"}
    out: dict[str, dict] = {}
    for ch in channels:
        cfg = {"name": ch, "unique_id": f"edgewatch_{device}_{ch}",
               "object_id": f"{device}_{ch}", "state_topic": f"{base}/telemetry",
               "value_template": "{{ value_json['values']['" + ch + "'] }}",
               "state_class": "measurement", "device": dev, **avail}
        if ch.lower() in KNOWN:
            cfg["device_class"], cfg["unit_of_measurement"] = KNOWN[ch.lower()]
        out[f"{discovery_prefix}/sensor/{device}/{ch}/config"] = cfg
    out[f"{discovery_prefix}/binary_sensor/{device}/anomaly/config"] = {
        "name": "anomaly", "unique_id": f"edgewatch_{device}_anomaly",
        "object_id": f"{device}_anomaly", "state_topic": f"{base}/telemetry",
        "value_template": "{{ 'ON' if value_json.anomaly else 'OFF' }}",
        "device_class": "problem", "json_attributes_topic": f"{base}/alert",
        "device": dev, **avail}
    out[f"{discovery_prefix}/binary_sensor/{device}/status/config"] = {
        "name": "status", "unique_id": f"edgewatch_{device}_status",
        "object_id": f"{device}_status", "state_topic": f"{base}/status",
        "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
        "device_class": "connectivity", "entity_category": "diagnostic", "device": dev}
    return out


def publish(client, device: str, channels, prefix: str = "edgewatch", **kw) -> list:
    """Publish the retained discovery configs of one device; the paho MessageInfo of each."""
    return [client.publish(topic, json.dumps(cfg, separators=(",", ":")), qos=1, retain=True)
            for topic, cfg in configs(device, channels, prefix, **kw).items()]
