"""Board configuration: one JSON file on flash, checked with one-line messages.

`config.json` holds what differs per device (id, broker, credentials, thresholds);
`board.json` is the resolved board file (`boards/<name>.json` merged with its base
by `edgewatch.board.catalog` at deploy time) and holds the pins. Every default lives in
DEFAULTS below and nowhere else; k, eps and sigma_window come from the model blob
unless the config sets them.
"""

import json

CONFIG_FILE = "config.json"
BOARD_FILE = "board.json"

DEFAULTS = {
    "prefix": "edgewatch",
    "period_ms": 60000,
    "user": None,
    "password": None,
    "ca": None,
    "client_cert": None,
    "client_key": None,
    "wifi": None,
    "ota_key": None,  # this board's own key (derived on the host), hex
    "ota_key_version": 1,  # the master key version it was derived from
    "ota_unsigned": False,  # True: no key, accept unsigned models (development only)
    "model_file": "model.ewb",
    "read_retries": 3,
    # None: the sensor's own minimum interval between reads (DHT: 1-2 s)
    "retry_ms": None,
    "detector": {
        "k": None,  # None: from the model blob, else FALLBACK
        "eps": None,
        "sigma_window": None,
        # one channel unchanged this many samples: None the model's per-channel limits,
        # else STUCK_FALLBACK
        "stuck_samples": None,
        "dropout_periods": 1,
        "shift_factor": None,  # None: from the model blob; 0: the shift rule off
        "still_samples": None,  # whole reading repeated: None from the model blob; 0 off
        # "residual": the model's own error scale (blob); "seed": pred +- k*(window sigma + eps);
        # None: residual when the model carries its calibration
        "band": None,
        "episode_gap": 20,  # alerts fewer samples apart than this are one episode (one message)
        "resend_samples": 60,  # a lasting episode's alert is sent again this often
    },
    "outbox": {"file": "outbox.bin", "slots": 200, "slot_size": 512},
    "backoff": {"min_ms": 1000, "max_ms": 60000},
    "socket_timeout_ms": 5000,
    "keepalive_s": 60,
    "status_every_ms": 300000,
    # console: "sample" prints one line per sample (seq, time, values, prediction, band,
    # verdict); "quiet" only boot, connection and alert lines
    "log": "sample",
    # simulation only: stop after this many samples (0 = run forever) and drain first
    "stop_after": 0,
    "drain_ms": 10000,
    # simulation only: behave as a board whose clock is never set (t null, samples sent
    # with their age)
    "sim_no_clock": False,
}

# Detector parameters used when neither the config nor a model blob gives them
# (the seed's is_anomalie: k = 3, eps = 0.01; sigma over the model window).
FALLBACK = {"k": 3.0, "eps": 0.01, "sigma_window": 24}
STUCK_FALLBACK = 120  # one channel unchanged this many samples, when no model says otherwise

SENSORS = ("dht11", "dht22", "shtc3")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


class ConfigError(Exception):
    """A config or board file problem, as one line naming the file and the field."""


def _read_json(path, what):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("%s: missing (%s; `make deploy` copies it)" % (path, what))
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError("%s: not valid JSON" % path)
    if not isinstance(data, dict):
        raise ConfigError("%s: expected a JSON object" % path)
    return data


def _merge(base, over, path, where=""):
    out = {}
    for k in base:
        out[k] = base[k]
    for k in over:
        if k not in base:
            raise ConfigError("%s: unknown key '%s%s'" % (path, where, k))
        if isinstance(base[k], dict) and over[k] is not None:
            if not isinstance(over[k], dict):
                raise ConfigError("%s: %s%s: expected an object" % (path, where, k))
            out[k] = _merge(base[k], over[k], path, where + k + ".")
        else:
            out[k] = over[k]
    return out


def _num(path, name, v, lo, hi, integer=False, none_ok=False):
    if v is None and none_ok:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or not (lo <= v <= hi):
        raise ConfigError("%s: %s: expected %s in %s..%s, got %r"
                          % (path, name, "an integer" if integer else "a number", lo, hi, v))


def _str(path, name, v, none_ok=True):
    if v is None and none_ok:
        return
    if not isinstance(v, str) or not v:
        raise ConfigError("%s: %s: expected a non-empty string, got %r" % (path, name, v))


def parse_broker(url, path="config.json"):
    """(host, port, tls) from mqtt://host[:port] or mqtts://host[:port]."""
    if not isinstance(url, str):
        raise ConfigError("%s: broker: expected mqtt://host[:port] or mqtts://host[:port]" % path)
    if url.startswith("mqtts://"):
        tls, rest, port = True, url[8:], 8883
    elif url.startswith("mqtt://"):
        tls, rest, port = False, url[7:], 1883
    else:
        raise ConfigError("%s: broker: %r is not an mqtt:// or mqtts:// URL" % (path, url))
    rest = rest.rstrip("/")
    host = rest
    if ":" in rest:
        host, p = rest.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise ConfigError("%s: broker: bad port in %r" % (path, url))
    if not host or "/" in host:
        raise ConfigError("%s: broker: no host in %r" % (path, url))
    return host, port, tls


def check_device_id(dev, path="config.json"):
    """Raise ConfigError unless `dev` is 1-32 chars of [A-Za-z0-9_-] (docs/messages.md)."""
    if not isinstance(dev, str) or not 1 <= len(dev) <= 32 or any(c not in _ID_CHARS for c in dev):
        raise ConfigError("%s: device: expected 1-32 characters of A-Z a-z 0-9 _ -, got %r"
                          % (path, dev))


def load_board(path=BOARD_FILE):
    """The resolved board file (pins, sensor kind, watchdog) as a dict."""
    b = _read_json(path, "the resolved board file")
    if b.get("sensor") not in SENSORS:
        raise ConfigError("%s: sensor: expected one of %s, got %r"
                          % (path, ", ".join(SENSORS), b.get("sensor")))
    if not isinstance(b.get("pins"), dict):
        raise ConfigError("%s: pins: expected an object" % path)
    return b


def load(path=CONFIG_FILE, board_path=BOARD_FILE):
    """Read and check config.json and board.json; return the config dict with defaults filled.

    The board dict is under cfg["board_info"]; broker URL parts under "host", "port", "tls".
    """
    raw = _read_json(path, "the device config")
    for key in ("device", "board", "broker"):
        if key not in raw:
            raise ConfigError("%s: %s: missing" % (path, key))
    extra = {k: raw.pop(k) for k in ("device", "board", "broker", "sensor") if k in raw}
    cfg = _merge(DEFAULTS, raw, path)
    check_device_id(extra["device"], path)
    _str(path, "board", extra["board"], none_ok=False)
    b = extra["broker"]
    if type(b) is str and "," in b:  # a cluster's nodes: tried in turn (link.py)
        b = extra["broker"] = [parse_broker(u, path) for u in b.split(",")]
        if any(x[2] != b[0][2] for x in b):
            raise ConfigError("%s: broker: mix of mqtt:// and mqtts:// URLs" % path)
        b = b[0]
    else:
        b = parse_broker(b, path)
    host, port, tls = b
    board = load_board(board_path)
    if board.get("name") != extra["board"]:
        raise ConfigError("%s: board: %r, but %s is for %r"
                          % (path, extra["board"], board_path, board.get("name")))
    sensor = extra.get("sensor", board["sensor"])
    if sensor != board["sensor"]:
        raise ConfigError("%s: sensor: %r, but board %r has a %r"
                          % (path, sensor, extra["board"], board["sensor"]))
    prefix = cfg["prefix"]
    _str(path, "prefix", prefix, none_ok=False)
    if "/" in prefix or "#" in prefix or "+" in prefix:
        raise ConfigError("%s: prefix: must not contain / # +, got %r" % (path, prefix))
    _num(path, "period_ms", cfg["period_ms"], 10, 86400000, integer=True)
    for name in ("user", "password", "ca", "client_cert", "client_key", "model_file"):
        _str(path, name, cfg[name])
    if (cfg["user"] is None) != (cfg["password"] is None):
        raise ConfigError("%s: user and password: give both or neither" % path)
    if tls and not cfg["ca"]:
        raise ConfigError("%s: ca: an mqtts:// broker needs the CA certificate file" % path)
    if not tls and (cfg["ca"] or cfg["client_cert"]):
        raise ConfigError("%s: ca/client_cert: given, but the broker URL is mqtt:// (use mqtts://)"
                          % path)
    if (cfg["client_cert"] is None) != (cfg["client_key"] is None):
        raise ConfigError("%s: client_cert and client_key: give both or neither" % path)
    wifi = cfg["wifi"]
    if wifi is not None:
        if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not wifi["ssid"]:
            raise ConfigError("%s: wifi: expected {\"ssid\": ..., \"password\": ...}" % path)
        # association + DHCP usually take 2-6 s; past this the link retries with backoff
        wifi.setdefault("timeout_ms", 15000)
        _num(path, "wifi.timeout_ms", wifi["timeout_ms"], 100, 120000, integer=True)
    key = cfg["ota_key"]
    if key is not None:
        try:
            import binascii
            if len(key) < 32:
                raise ValueError
            cfg["ota_key"] = binascii.unhexlify(key)
        except (ValueError, TypeError):
            raise ConfigError("%s: ota_key: expected at least 32 hex digits" % path)
    _num(path, "ota_key_version", cfg["ota_key_version"], 1, 65535, integer=True)
    if type(cfg["ota_unsigned"]) is not bool:
        raise ConfigError("%s: ota_unsigned: expected true or false" % path)
    # what the OTA path of blob.py checks: (this board's key, key version); (None, 0) refuses
    # every model received over the air; None (ota_unsigned, no key) takes unsigned ones
    # (both keys are consumed here: the dict the app keeps stays as small as it was)
    kv, unsigned = cfg.pop("ota_key_version"), cfg.pop("ota_unsigned")
    if cfg["ota_key"]:
        cfg["ota_key"] = (cfg["ota_key"], kv)
    elif unsigned:
        print("config: WARNING ota_unsigned: anyone who can publish to the model topic can "
              "replace the model (development only)")
    else:
        cfg["ota_key"] = (None, 0)
    _num(path, "read_retries", cfg["read_retries"], 0, 10, integer=True)
    _num(path, "retry_ms", cfg["retry_ms"], 0, 5000, integer=True, none_ok=True)
    d = cfg["detector"]
    _num(path, "detector.k", d["k"], 0.1, 100, none_ok=True)
    _num(path, "detector.eps", d["eps"], 0, 10, none_ok=True)
    _num(path, "detector.sigma_window", d["sigma_window"], 2, 256, integer=True, none_ok=True)
    _num(path, "detector.stuck_samples", d["stuck_samples"], 2, 100000, integer=True, none_ok=True)
    if d["band"] not in (None, "residual", "seed"):
        raise ConfigError("%s: detector.band must be \"residual\" or \"seed\"" % path)
    _num(path, "detector.episode_gap", d["episode_gap"], 1, 100000, integer=True)
    _num(path, "detector.resend_samples", d["resend_samples"], 1, 1000000, integer=True)
    _num(path, "detector.dropout_periods", d["dropout_periods"], 1, 100000, integer=True)
    _num(path, "detector.shift_factor", d["shift_factor"], 0, 1000, none_ok=True)
    _num(path, "detector.still_samples", d["still_samples"], 0, 100000, integer=True, none_ok=True)
    o = cfg["outbox"]
    _str(path, "outbox.file", o["file"], none_ok=False)
    _num(path, "outbox.slots", o["slots"], 8, 100000, integer=True)
    _num(path, "outbox.slot_size", o["slot_size"], 256, 4096, integer=True)
    b = cfg["backoff"]
    _num(path, "backoff.min_ms", b["min_ms"], 10, 3600000, integer=True)
    _num(path, "backoff.max_ms", b["max_ms"], b["min_ms"], 3600000, integer=True)
    _num(path, "socket_timeout_ms", cfg["socket_timeout_ms"], 100, 60000, integer=True)
    _num(path, "keepalive_s", cfg["keepalive_s"], 0, 65535, integer=True)
    _num(path, "status_every_ms", cfg["status_every_ms"], 0, 86400000, integer=True)
    _num(path, "stop_after", cfg["stop_after"], 0, 10 ** 9, integer=True)
    if cfg["log"] not in ("sample", "quiet"):
        raise ConfigError('%s: log: expected "sample" or "quiet"' % path)
    _num(path, "drain_ms", cfg["drain_ms"], 0, 3600000, integer=True)
    if type(cfg["sim_no_clock"]) is not bool:
        raise ConfigError("%s: sim_no_clock: expected true or false" % path)
    cfg.update(extra)
    cfg["sensor"] = sensor
    cfg["host"], cfg["port"], cfg["tls"] = host, port, tls
    cfg["board_info"] = board
    cfg["fallback"] = FALLBACK
    return cfg
