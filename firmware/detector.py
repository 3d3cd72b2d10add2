"""Per-sample verdicts: the seed's band rule plus device-fault rules.

band     mode "residual" (a model whose blob carries the band calibration): the residual
         r = value - pred (normalised units) outside +-k*s, where s is the model's own
         error scale: calibrated on the training residuals (mean |r|, robust), then
         adapted slowly (rate alpha) from the residuals of unflagged samples only, never
         below the sensor-resolution floor nor above 4x its calibrated value.
         The model's slow bias (mean residual of unflagged samples, rate 1/128) is
         taken off the prediction. A flagged channel's reading does not enter the model's
         input window (the last good value does), so the reference does not follow the
         anomaly; after
         `reanchor` flagged samples in a row the channel accepts the new level.
         mode "seed" (or a blob without the calibration): value outside
         pred +- k*(sigma + eps), sigma the population std of the channel's last
         `sigma_window` samples (the seed's is_anomalie uses numpy .std())
drift    mode "residual": two-sided CUSUM of z = r/s (clipped to +-k), reference `ref`;
         fires while either sum is above the calibrated `h` (a drift or level shift
         while it develops, before any single sample leaves the band)
stuck    one channel unchanged for its stuck limit (the blob's per-channel limit from the
         training rows and the sensor's resolution, or `stuck_samples`): every sample
         from then on while it stays; and, channel None, the whole reading repeated
         `still_samples` times in a row (value = the repeats so far)
range    outside the sensor's physical range (sensors.RANGES)
dropout  `dropout_periods` or more sample periods missed before this sample
read     the sensor gave no value after its bounded retries
shift    a sustained shift (when the blob carries a shift calibration): the rolling mean
         of the last W samples, per channel u = (mean - center) / spread, fires when
         both max|u| > f and u'Mu > f*f (M: the fit rows' inverse covariance, scaled) --
         the host's ms-ensemble view, calibrated by edgewatch.training.export.shiftcal

Alerts are tuples (rule, channel or None, value, lo, hi, pred) in physical units. The
telemetry flags every sample; the alert MESSAGE is for episodes: `send` is True on the
first flagged sample after `episode_gap` quiet samples and every `resend_samples` while
the episode lasts (the app sends a sample's alerts only then).
History is kept in physical units, so a model swapped in over the air (new scaler)
keeps the samples already seen. Buffers are allocated once.
"""

import math
from array import array

CAPACITY = 64  # samples of history: the largest model window / sigma window accepted
STUCK_FALLBACK = 120  # firmware/config.py's; for a channel no model gives a limit


class ModelMismatch(Exception):
    """The model's channels or window do not fit this sensor and detector."""


class Detector:
    """Holds the recent history of one sensor and judges each new sample."""

    def __init__(self, names, limits, params, fallback, shiftmod=None, resmod=None):
        self.names = names
        self.limits = limits
        n = len(names)
        self.params = params  # config detector section: explicit values win over the blob
        self.fallback = fallback
        self.dropout_n = params["dropout_periods"]
        self.gap = params.get("episode_gap") or 10
        self.resend = params.get("resend_samples") or 60
        self.hist = array("f", bytes(4 * CAPACITY * n))
        # what enters the history: the reading, or in residual mode the last good value while
        # the channel is flagged (firmware/residual.py)
        self._in = array("f", bytes(4 * n))
        self.stuck_lim = [params["stuck_samples"] or STUCK_FALLBACK] * n
        self._resmod = resmod  # firmware/residual.py, imported only for a model that needs it
        self._residual = None
        self.band = None  # (k, ref, h, alpha, reanchor, scale0, floor, stuck) in residual mode
        self.send = False  # whether this sample's alerts go out as a message
        self._quiet = 1 << 20  # samples since the last flagged one
        self._sent = 0  # samples since the last message
        self.count = 0  # valid samples in hist (up to CAPACITY)
        self.pos = 0  # next write index
        self.last = [None] * n
        self.same = [0] * n
        self.pred = [0.0] * n
        self.lo = [0.0] * n
        self.hi = [0.0] * n
        self.has_band = False
        self.alerts = []
        self.model = None
        self._order = None  # model channel j -> sensor channel index
        self._win = None
        self.shift = None  # (window, factor, center, spread, matrix) in model channel order
        # firmware/shift.py, imported only for a model that carries the rule (CPython passes it)
        self._shiftmod = shiftmod
        self._judge = None
        self._set_params(None)

    def _set_params(self, model):
        p, f = self.params, self.fallback

        def pick(name):
            if p[name] is not None:
                return p[name]
            if model is not None:
                return getattr(model, name)
            return f[name]

        self.k = float(pick("k"))
        self.eps = float(pick("eps"))
        self.sigma_window = int(pick("sigma_window"))
        st = p.get("still_samples")  # None: the model's (0 without one); 0: off
        self.still_n = (model.still if model is not None else 0) if st is None else st
        n = len(self.names)
        band = getattr(model, "band", None) if model is not None else None
        if p.get("band") == "seed":
            band = None
        self.band = band
        for c in range(n):
            self.stuck_lim[c] = p["stuck_samples"] or STUCK_FALLBACK
        if band is None:
            self._residual = None
            return
        rm = self._resmod
        if rm is None:
            import gc

            gc.collect()
            import residual as rm  # boards whose models lack the band never load it
        try:
            band = self.band = rm.setup(self, band)
        except ValueError as e:
            self.band = None
            raise ModelMismatch(str(e))
        self._residual = rm.judge
        for j in range(len(self._order)):
            c = self._order[j]
            if not p["stuck_samples"]:  # 0: the channel never moved in training: no limit
                self.stuck_lim[c] = band[7][j] or 1 << 30

    def set_model(self, model):
        """Use `model` (engine.Model) for the band rule, or None for rules only."""
        if model is None:
            self.model, self._order, self._win, self.shift = None, None, None, None
            self._set_params(None)
            return
        lower = [s.lower() for s in self.names]
        order = []
        for name in model.names:
            if name.lower() not in lower:
                raise ModelMismatch("channels %s do not match sensor %s"
                                    % (",".join(model.names), ",".join(self.names)))
            order.append(lower.index(name.lower()))
        if len(order) != len(self.names):
            raise ModelMismatch("model has %d channels, sensor %d" % (len(order), len(self.names)))
        sw = self.params["sigma_window"] or model.sigma_window
        if getattr(model, "band", None) is not None and self.params.get("band") != "seed":
            sw = 1  # the residual band keeps no sigma window
        if model.window > CAPACITY or sw > CAPACITY:
            raise ModelMismatch("window %d / sigma window %d over %d" % (model.window, sw, CAPACITY))
        f = self.params.get("shift_factor")
        sh = model.shift
        if sh is not None and f != 0:
            sm = self._shiftmod
            if sm is None:
                import gc

                gc.collect()  # the blob parser was just freed: make room for the module
                import shift as sm  # boards whose models lack the rule never load it
            try:
                sh = sm.parse(sh, len(order))
            except ValueError as e:
                raise ModelMismatch(str(e))
            if sh[0] > CAPACITY:
                raise ModelMismatch("shift window %d over %d" % (sh[0], CAPACITY))
            self._judge = sm.judge
            self._u = array("f", bytes(4 * len(order)))
            self.shift_factor = sh[1] if f is None else f
        else:
            sh = None
        self.shift = sh
        self._order = order
        self._win = array("f", bytes(4 * model.window * len(order)))
        self.model = model
        self._set_params(model)

    def _at(self, back, ch):
        # physical value `back` samples ago (1 = newest) of sensor channel ch
        n = len(self.names)
        i = (self.pos - back) % CAPACITY
        return self.hist[i * n + ch]

    def _push(self):
        n = len(self.names)
        base = self.pos * n
        src = self._in  # the readings, or held values of flagged channels (residual mode)
        for c in range(n):
            self.hist[base + c] = src[c]
        self.pos = (self.pos + 1) % CAPACITY
        if self.count < CAPACITY:
            self.count += 1

    def _band(self, values):
        m = self.model
        order = self._order
        w = m.window
        need = w if self.band is not None else max(w, self.sigma_window)
        if self.count < need:
            return
        win = self._win
        nc = len(order)
        for t in range(w):
            for j in range(nc):
                win[t * nc + j] = (self._at(w - t, order[j]) - m.offset[j]) / m.scale[j]
        pred = m.predict(win)
        if self.band is not None:
            self._residual(self, values, pred)
            return
        sw = self.sigma_window
        for j in range(nc):
            c = order[j]
            off, sc = m.offset[j], m.scale[j]
            # sums of the deviations from the newest sample: sigma is shift-invariant, and
            # E[x^2] - E[x]^2 of values far from 0 and close together (a calm room) cancels
            # away the digits a board's single-precision floats have
            ref = self._at(1, c)
            s = s2 = 0.0
            for back in range(1, sw + 1):
                x = (self._at(back, c) - ref) / sc
                s += x
                s2 += x * x
            mean = s / sw
            var = s2 / sw - mean * mean
            sigma = math.sqrt(var) if var > 0 else 0.0
            half = self.k * (sigma + self.eps)
            p = pred[j]
            self.pred[c] = p * sc + off
            self.lo[c] = (p - half) * sc + off
            self.hi[c] = (p + half) * sc + off
            v = (values[c] - off) / sc
            if not (p - half < v < p + half):  # the seed's strict inequalities
                self.alerts.append(("band", self.names[c], values[c], self.lo[c], self.hi[c],
                                    self.pred[c]))
        self.has_band = True

    def step(self, values, missed=0):
        """Judge one sample. `values` is the reading list or None (failed read);
        `missed` the number of sample periods skipped before it. Returns the alert list
        (reused: copy what you keep)."""
        alerts = self.alerts
        alerts.clear()
        self.has_band = False
        if missed >= self.dropout_n:
            alerts.append(("dropout", None, missed, None, None, None))
        if values is None:
            alerts.append(("read", None, None, None, None, None))
            return self._episode(alerts)
        ok = True
        for c in range(len(self.names)):
            v = values[c]
            if v is None:
                alerts.append(("read", self.names[c], None, None, None, None))
                ok = False
                continue
            lo, hi = self.limits[c]
            if not (lo <= v <= hi):
                alerts.append(("range", self.names[c], v, lo, hi, None))
                ok = False
            if v == self.last[c]:
                self.same[c] += 1
                if self.same[c] >= self.stuck_lim[c]:  # every sample while it stays
                    alerts.append(("stuck", self.names[c], v, None, None, None))
            else:
                self.last[c] = v
                self.same[c] = 1
            self._in[c] = v
        n = self.still_n
        if n and ok:  # the whole reading unchanged: the repeats of the sample before
            run = min(self.same) - 1
            if run >= n:
                alerts.append(("stuck", None, run, None, None, None))
        # a sample that failed or is physically impossible stays out of the model's window
        if ok:
            if self.model is not None:
                self._band(values)
            self._push()
            if self.shift is not None:
                self._judge(self)
        return self._episode(alerts)

    def _episode(self, alerts):
        # one message per episode: at its first flagged sample, then every `resend` samples
        send = False
        if self._sent < 1 << 20:
            self._sent += 1
        if alerts:
            if self._quiet >= self.gap or self._sent >= self.resend:
                send = True
                self._sent = 0
            self._quiet = 0
        elif self._quiet < 1 << 20:
            self._quiet += 1
        self.send = send
        return alerts
