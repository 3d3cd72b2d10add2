"""Score on the host for boards that send readings but run no model; publish their alerts.

    edgewatch score --model models/default --sensor dht22

The same model and the same rule as on the board: predictions come from the
model folder's ``model.tflite`` through the TensorFlow Lite Micro reference
interpreter (bit-exact with the board's int8 engine), quantised with the
parameters of its ``model.ewb``; the rule is the firmware's own
``firmware/detector.py`` (loaded here in CPython), with k, ε and the σ window
from the blob. The rules the blob calibrates run as on the board: the residual band
(``band``: the residual outside ± k·s; a blob made with ``--band seed``: outside
prediction ± k·(σ_window + ε)), its ``drift`` and ``burst`` CUSUMs and, when the blob
carries a shift calibration, ``shift`` (a sustained move of the rolling mean); each
alert goes out in the board's format on ``<prefix>/<device>/alert``.

Only the model's rules (``band``, ``drift``, ``burst``, ``shift``) are published: a board without a model still runs its
fault rules (stuck, range, dropout, read) and sends those itself. Telemetry that
carries a ``model`` id is skipped (that board scores itself) unless ``--all``.

An alert's ``seq`` is ``2^62 + 16·sample + i`` (docs/messages.md): it never
collides with the board's own counter, and scoring the same sample again (a
redelivery, a second scorer) gives the same seq, so the collector and the bridge
keep it once.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

from edgewatch.core import firmware
from edgewatch.core.errors import UserError
from edgewatch.core.schema import SchemaError, Telemetry, parse, parse_alert
from edgewatch.core.settings import (
    add_client_arguments,
    connect,
    mqtt_client,
    mqtt_settings,
    service_client_id,
)
from edgewatch.services.daemon import serve_until_signal
from edgewatch.services.metrics import Metrics, setup_logging

log = logging.getLogger("edgewatch.score")
HOST_SEQ_BASE = 2**62
# The largest sample seq whose alert seqs still fit the contract's 63-bit range.
MAX_SAMPLE = (2**63 - 1 - HOST_SEQ_BASE) // 16
MODEL_RULES = ("band", "drift", "burst", "shift")  # the rules that need the model; the board runs the rest itself


def alert_seq(sample: int, index: int) -> int:
    """The seq of the ``index``-th host alert about telemetry record ``sample``."""
    return HOST_SEQ_BASE + 16 * sample + index


class HostModel:
    """The board engine's interface (window, names, offset, scale, k, eps, sigma_window,
    model_id, predict) over the TFLite Micro interpreter and a model folder."""

    def __init__(self, model_dir: str | Path):
        from edgewatch.training.export import blob
        from edgewatch.training.export.convert import TFLM_ARENA

        d = Path(model_dir)
        for name in ("model.tflite", "model.ewb"):
            if not (d / name).is_file():
                raise UserError(f"{d / name}: missing (run `edgewatch convert --model {d}` first)")
        try:
            spec = blob.read((d / "model.ewb").read_bytes())
        except blob.BlobError as exc:
            raise UserError(f"{d / 'model.ewb'}: {exc}") from None
        tflite = (d / "model.tflite").read_bytes()
        if blob.model_id_of(tflite) != spec.model_id:
            raise UserError(f"{d}: model.tflite and model.ewb are different models "
                            f"({blob.model_id_of(tflite)} vs {spec.model_id})")
        from tflite_micro.python.tflite_micro import runtime

        self.interp = runtime.Interpreter.from_bytes(tflite, arena_size=TFLM_ARENA)
        self.window, self.names = spec.window, list(spec.names)
        self.channels = len(self.names)
        self.offset, self.scale = list(spec.offset), list(spec.scale)
        self.k, self.eps = spec.detector.k, spec.detector.eps
        self.sigma_window = spec.detector.sigma_window
        self.model_id = spec.model_id
        self.quant = (spec.in_scale, spec.in_zp, spec.out_scale, spec.out_zp)
        # the engine's quantisation, which the board's detector reads (firmware/detk.py)
        self.in_scale, self.in_zp, self.out_scale, self.out_zp = self.quant
        # the int8 net may predict the change from the newest sample (docs/model_blob.md)
        self.residual = bool(getattr(spec, "residual", False))
        # the sustained-shift section as the engine hands it over (raw; the detector parses it)
        self.shift = None if spec.shift is None else blob.shift_section(spec.shift, self.channels)
        self.still = spec.still
        # the residual band's raw section, as firmware/blob.py hands it to the board's detector
        self.band = None if spec.band is None else blob.band_section(spec.band, self.channels)
        self.move = None if spec.band is None or spec.band.move is None else \
            blob.move_section(spec.band.move, self.channels)
        self.lock = threading.Lock()

    def predict_q(self, xq) -> bytes:
        """int8 window (window*channels bytes, oldest first) -> int8 output bytes, as the
        board's engine.Model.predict_q (it does not stream: the detector hands it whole
        windows)."""
        import numpy as np

        x = np.frombuffer(bytes(xq), np.int8).reshape(1, self.window, self.channels)
        with self.lock:  # one interpreter, its tensors are shared state
            self.interp.set_input(x, 0)
            self.interp.invoke()
            return np.array(self.interp.get_output(0), np.int8).reshape(-1).tobytes()

    def predict(self, norm_window) -> list[float]:
        """Normalised window (window*channels, oldest first) -> normalised prediction per channel."""
        import numpy as np
        from edgewatch.training.export.convert import dequantize, quantize

        s_in, z_in, s_out, z_out = self.quant
        x = quantize(np.asarray(norm_window, np.float64), s_in, z_in)
        with self.lock:  # one interpreter, its tensors are shared state
            self.interp.set_input(x.reshape(1, self.window, self.channels), 0)
            self.interp.invoke()
            y = np.array(self.interp.get_output(0), np.int8).reshape(-1)
        pred = [float(v) for v in dequantize(y, s_out, z_out)]
        if self.residual:  # added in float, as the board's engine does
            last = len(norm_window) - self.channels
            pred = [p + float(norm_window[last + c]) for c, p in enumerate(pred)]
        return pred


class Scorer:
    """Per-device firmware detectors over one HostModel; telemetry in, board-format alerts out."""

    def __init__(self, model: HostModel, sensor: str = "dht22"):
        self.detector_mod = firmware.load("detector")
        self.shift_mod = firmware.load("shift")  # the board imports it by name; here it is passed in
        self.res_mod = firmware.load("residual")
        self.loader = firmware.load("detk_plain")  # the kernels as plain code (no viper in CPython)
        sensors = firmware.load("sensors")
        if sensor not in sensors.RANGES:
            raise UserError(f"--sensor {sensor!r}: use one of {', '.join(sorted(sensors.RANGES))}")
        self.model, self.sensor_names = model, list(sensors.NAMES)
        self.limits = sensors.RANGES[sensor]
        self.dets: dict[str, object] = {}
        self.last_seq: dict[str, tuple[int, int]] = {}  # device -> (epoch, last scored seq)
        # only the model's rules are the host's job; fault rules stay quiet here
        self.params = {"k": None, "eps": None, "sigma_window": None, "stuck_samples": 10**9,
                       "dropout_periods": 10**9, "still_samples": 0}

    def _detector(self, device: str):
        d = self.dets.get(device)
        if d is None:
            m = self.model
            d = self.detector_mod.Detector(self.sensor_names, self.limits, self.params,
                                           {"k": m.k, "eps": m.eps, "sigma_window": m.sigma_window},
                                           self.shift_mod, self.res_mod, self.loader)
            try:
                d.set_model(m)
            except self.detector_mod.ModelMismatch as exc:
                raise UserError(f"model {m.model_id}: {exc}") from None
            self.dets[device] = d
        return d

    def step(self, rec: Telemetry) -> list[dict]:
        """The model's alerts (band, drift, burst, shift; message dicts) for one telemetry record, in arrival order per device.

        A record at or below the device's last scored seq (a replay, or late) is
        skipped: the rule depends on the history, which has moved on. A new epoch
        (the board's flash was erased, seq restarts) starts the device's history again.
        """
        epoch, last = self.last_seq.get(rec.device, (rec.epoch, -1))
        if epoch != rec.epoch:
            self.dets.pop(rec.device, None)
            last = -1
        if rec.seq <= last or rec.seq > MAX_SAMPLE:
            return []
        self.last_seq[rec.device] = (rec.epoch, rec.seq)
        lower = {k.lower(): v for k, v in rec.values.items()}
        values = [lower.get(n) for n in self.sensor_names]
        if all(v is None for v in values):
            values = None
        out = []
        for rule, channel, value, lo, hi, pred in self._detector(rec.device).step(values):
            if rule not in MODEL_RULES:
                continue
            msg = {"v": 1, "device": rec.device, "epoch": rec.epoch,
                   "seq": alert_seq(rec.seq, len(out)), "t": rec.t,
                   "sample": rec.seq, "rule": rule, "channel": channel, "value": value,
                   "band": [lo, hi], "pred": pred, "model": self.model.model_id}
            parse_alert(msg, rec.device)  # what we publish passes our own parser
            out.append(msg)
        return out


def add_arguments(parser) -> None:
    """Options of `edgewatch score`."""
    parser.add_argument("--model", required=True, help="converted model folder (model.tflite, model.ewb)")
    parser.add_argument("--sensor", default="dht22",
                        help="sensor kind of the boards (dht22, dht11, shtc3): its physical range "
                             "keeps impossible readings out of the history, as on the board")
    parser.add_argument("--all", action="store_true",
                        help="also score telemetry of boards that run a model themselves")
    add_client_arguments(parser)


def run(args) -> int:
    """Score telemetry until SIGTERM/SIGINT."""
    setup_logging(args.log_level)
    mqtt = mqtt_settings(args)
    model = HostModel(args.model)
    scorer = Scorer(model, args.sensor)
    metrics = Metrics("score")
    # MQTT: clean session, nothing to resume, so a fresh unguessable id at each start.
    # On a RabbitMQ cluster (--broker amqp://...): the scorer's quorum queue, one active
    # consumer at a time (host/services/cluster.py); a sample is acknowledged once its alerts
    # are handed to the broker, so a scorer killed mid-sample scores it again on restart and
    # the alerts' seqs (alert_seq: derived from the sample's) make the repeats the same alerts.
    client = mqtt_client(mqtt, service_client_id("scorer", None), role="scorer",
                         manual_ack=bool(mqtt.amqp))
    lock = threading.Lock()

    def on_message(c, _u, msg):
        try:
            rec = parse(msg.topic, msg.payload, mqtt.prefix)
            if not isinstance(rec, Telemetry) or (rec.model and not args.all):
                return
            with lock:
                alerts = scorer.step(rec)
            for a in alerts:
                c.publish(f"{mqtt.prefix}/{rec.device}/alert",
                          json.dumps(a, separators=(",", ":")), qos=1)
                log.info("%s alert %s sample %d %s", a["rule"], rec.device, rec.seq, a["channel"],
                         extra={"device": rec.device, "sample": rec.seq})
        except SchemaError as exc:
            metrics.reject(log, msg.topic, exc.reason)
        except Exception:  # one bad message never stops scoring
            log.exception("unexpected error on %s", msg.topic[:120])
        finally:
            if mqtt.amqp:  # after the alerts were handed over (publish is queued in order)
                c.ack(msg.mid, msg.qos)

    client.on_message = on_message
    # No shared subscription: the rule needs each device's history in one process.
    def stop() -> None:
        client.disconnect()
        client.loop_stop()

    service = SimpleNamespace(start=lambda: connect(client, mqtt, [(f"{mqtt.prefix}/+/telemetry", 1)]),
                              stop=stop)
    serve_until_signal(service, f"scoring with model {model.model_id} ({', '.join(model.names)}, "
                                f"window {model.window})")
    return 0
