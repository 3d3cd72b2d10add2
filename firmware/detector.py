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
         `reanchor` flagged samples in a row the channel accepts the new level, and after
         two after a dropout or a failed reading (the first two readings after such a gap
         both out of the band: a level that moved meanwhile, whose correct readings are then
         not flagged against the level from before the gap).
         mode "seed" (or a blob without the calibration): value outside
         pred +- k*(sigma + eps), sigma the population std of the channel's last
         `sigma_window` samples (the seed's is_anomalie uses numpy .std())
drift    mode "residual": two-sided CUSUM of z = r/s (clipped to +-3), reference `ref`;
         fires when either sum passes the calibrated `h` (a drift or level shift while it
         develops, before any single sample leaves the band), then both restart from 0
         (Page's CUSUM: a lasting drift fires again as it accumulates)
burst    mode "residual", a blob with a burst limit: one-sided CUSUM of |z| (up to k) with
         reference 3: several large residuals close together, of either sign (a noise
         burst, repeated jumps), also when none of them leaves the band (with k above 3 +
         the limit, one residual between the two fires it alone); restarts at its alarm
stuck    one channel unchanged for its stuck limit (the blob's per-channel limit from the
         training rows and the sensor's resolution, or `stuck_samples`): every sample
         from then on while it stays; and, channel None, the whole reading repeated
         `still_samples` times in a row (value = the repeats so far)
range    outside the sensor's physical range (sensors.RANGES)
dropout  `dropout_periods` or more sample periods missed before this sample
read     the sensor gave no value after its bounded retries
drift    also (a blob with the move calibration: moverule.py) a channel's move over
         the last H samples net of what the other channels' moves explain, past the
         limit the fit rows' net moves reach at the false-alarm budget: a drift too slow
         for the CUSUM, against the channels it should move with
shift    a sustained shift (when the blob carries a shift calibration): the rolling mean
         of the last W samples, per channel u = (mean - center) / spread, fires when
         both max|u| > f and u'Mu > f*f (M: the fit rows' inverse covariance, scaled) --
         the host's ms-ensemble view, calibrated by edgewatch.training.export.shiftcal;
         after 512 shifted samples in a row the level is accepted (the center
         moves to the rolling mean): a lasting change is a bounded episode, not an alarm
         for ever

Alerts are tuples (rule, channel or None, value, lo, hi, pred) in physical units. The
telemetry flags every sample; the alert MESSAGE is for episodes: `send` is True on the
first flagged sample after `episode_gap` quiet samples and every `resend_samples` while
the episode lasts (the app sends a sample's alerts only then).
The history is kept normalised for the model (without one: the readings' float32 bits);
a model swapped in over the air (new scaler) gets it converted, so it keeps the samples
already seen. Buffers are allocated once. The rules run in
fixed point in viper kernels (firmware/detk.py; residual.py and shift.py for the rules a
model may carry): a step allocates nothing unless it alerts; pred/lo/hi leave the kernels'
state only when read, as integers x 1000 (Detector.fixed: the telemetry's numbers, and
the alerts' floats).
"""


# History: 128 samples (the largest model window / sigma window accepted); kernel state
# words: firmware/detk.py. Stuck limit for a channel no model gives one: 120 (config.py's).


from array import array


class ModelMismatch(Exception):
    """The model's channels or window do not fit this sensor and detector."""


class Detector:
    """Holds the recent history of one sensor and judges each new sample."""

    def __init__(self, names, limits, params, fallback, shiftmod=None, resmod=None, loader=None):
        # shiftmod/resmod: firmware/shift.py and residual.py, imported on the board only for
        # a model that carries them; loader: firmware/detk_plain.py, which CPython passes
        # (no viper there): the modules are then its plain compilations
        self._ld = loader
        self._resmod = resmod
        self._shiftmod = shiftmod
        self._mvmod = None  # firmware/moverule.py, loaded only for a model that carries it
        # the kernels' state, constants and history (firmware/detk.py: header, channels,
        # ring) and what enters the history (the reading, as float32 bits): allocated before
        # the set-up code is loaded, whose pieces would leave no room for them after
        n = len(names)
        # (after the ring: the move rule's constants, moverule.py)
        self._s = array("I", bytes(4 * (27 + 22 * n + 128 * n + 1 + n + n * n)))
        self._in = array("f", bytes(4 * n))
        self._setup("init", names, limits, params, fallback)
        self.ints = array("i", bytes(24 * n))  # fixed(), then detk.milli's factors (put reads it)

    def _setup(self, name, *args):
        # the set-up code (firmware/detset.py), dropped again after use
        import sys

        ds = self._load("detset")
        try:
            getattr(ds, name)(self, *args)
        finally:
            if getattr(ds, "__file__", "").endswith(".mpy"):
                sys.modules.pop("detset", None)  # from .mpy: loading it again compiles nothing
                # and empty it: the GC scans conservatively, and one stale word pointing at
                # the module would otherwise keep all its code (as engine._free_parser)
                ds.__dict__.clear()

    def _load(self, name):
        # a module of the rules: viper where the emitter exists, else plain bytecode
        if self._ld is not None:
            return self._ld.load(name)
        import gc

        gc.collect()  # room for the module
        try:
            return __import__(name)
        except (ImportError, SyntaxError, ValueError):
            import detk_plain

            return detk_plain.load(name)

    def fixed(self):
        """pred, lo, hi of every sensor channel c as integers round(x * 1000), x in
        physical units, into self.ints[c], [n + 2 c], [n + 2 c + 1] (the telemetry's
        numbers, schema.telemetry), in 32-bit integers by detk.milli (~2k instructions on
        RV32, nothing allocated; floats cost ~24k). Returns self.ints."""
        self._k.milli(self._s, self.ints)
        return self.ints

    def set_model(self, model):
        """Use `model` (engine.Model) for the band rule, or None for rules only.
        Raises ModelMismatch (the detector keeps the model it had)."""
        old = self._mvc
        self._mvc = False
        try:
            self._setup("set_model", model, ModelMismatch)
        except Exception:
            self._mvc = old
            raise
        mv = getattr(model, "move", None)
        if self.band is not None and mv is not None:  # the move rule (moverule.py)
            if self._mvmod is None:  # here, after the model (not App._rule_kernels, before
                # it: 392 B of bytecode there left make bench's RV32 harness no room for it)
                self._mvmod = self._load("moverule")
            self._mvmod.put(self._s, mv, len(self._order))
            self._mvc = True

    def _flag(self, values, flags):
        # alert tuples of the band kernel's flags (bit j: band, 8 + j: drift, 16 + j: burst)
        order = self._order
        k = self.fixed()
        n = len(self.names)
        for j in range(len(order)):
            c = order[j]
            for rule, bit in (("band", 1 << j), ("drift", 1 << (8 + j)), ("burst", 1 << (16 + j))):
                if flags & bit:
                    self.alerts.append((rule, self.names[c], values[c], k[n + 2 * c] / 1000,
                                        k[n + 2 * c + 1] / 1000, k[c] / 1000))

    def step(self, values, missed=0):
        """Judge one sample. `values` is the reading list or None (failed read);
        `missed` the number of sample periods skipped before it. Returns the alert list
        (reused: copy what you keep)."""
        alerts = self.alerts
        alerts.clear()
        self.has_band = False
        if missed >= self.dropout_n:
            alerts.append(("dropout", None, missed, None, None, None))
            self._gap(-1)
        if values is None:
            alerts.append(("read", None, None, None, None, None))
            self._gap(-1)
            return self._episode(alerts)
        ok = True
        # locals (an attribute is a map lookup per use in the loop), one per statement: a
        # longer multiple assignment builds a tuple, which allocates
        names = self.names
        limits = self.limits
        last = self.last
        same = self.same
        inp = self._in
        for c in range(len(names)):
            v = values[c]
            if v is None:
                alerts.append(("read", names[c], None, None, None, None))
                ok = False
                continue
            lo, hi = limits[c]
            if not (lo <= v <= hi):
                alerts.append(("range", names[c], v, lo, hi, None))
                ok = False
            if v == last[c]:
                run = same[c] + 1
                same[c] = run
                if run >= self.stuck_lim[c]:  # every sample while it stays
                    alerts.append(("stuck", names[c], v, None, None, None))
            else:
                if same[c] >= self.stuck_lim[c]:  # a stuck hold ends: the room moved on meanwhile
                    self._gap(c)
                last[c] = v
                same[c] = 1
            inp[c] = v
        n = self.still_n
        if n and ok:  # the whole reading unchanged: the repeats of the sample before
            run = min(self.same) - 1
            if run >= n:
                alerts.append(("stuck", None, run, None, None, None))
        # a sample that failed or is physically impossible stays out of the model's window
        if ok:
            s, b = self._s, self._in
            # a streaming model's window moves by one sample per step unless the history was
            # rewritten (a model set, a re-anchor): then only the newest row is written and
            # the engine steps without checking (firmware/engine.py)
            moved = self._moves
            if self._k.pre(s, b, self._q, moved):  # the model's window is full
                m = self.model
                flags = self._post(s, b, 0, m.predict_q(self._q, 1) if moved else m.predict_q(self._q))
                self._moves = self._streams
                if flags & 16777216:  # residual.judge re-anchored a channel: the history changed
                    self._moves = 0
                    flags &= 16777215
                self.has_band = True
                if flags:
                    self._flag(values, flags)
            if self.shift is not None:
                w = self._shiftmod.view_a(s, 0)
                if w and self._shiftmod.judge(self, w - 1):
                    self._shrun += 1
                    # shifted 512 samples in a row: the new level (the shift rule's center
                    # moves to it). 512 = the residual scale's adaptation time constant
                    # (training/export/bandcal.py ALPHA), longer than any fault the rules
                    # must keep reporting (SKAB's anomalies last <= 586 samples); the host's
                    # training/export/shiftcal.py REBASE. A fixed number: reading it from
                    # the config cost the C3's 80 KB heap the ~200 B it no longer had
                    if self._shrun >= 512:
                        self._shiftmod.rebase(self)
                        self._shrun = 0
                else:
                    self._shrun = 0
            if self._mvc:
                w = self._mvmod.judge(s)
                if w:  # a move the other channels do not make (moverule.py)
                    c = self._order[w - 1]
                    alerts.append(("drift", names[c], values[c], None, None, None))
        else:
            self._gap(-1)
        return self._episode(alerts)

    def _gap(self, c):
        # readings the model's history did not get (a dropout, a failed or impossible
        # reading: every channel, c -1) or got frozen (the end of sensor channel c's stuck
        # hold): a channel re-anchors when its next two readings both leave the band
        # (residual.judge: their flagged run 2 short of its limit), a level that moved
        # meanwhile, not after `reanchor` correct readings flagged against the level from
        # before; one reading out (a spike right after the gap) stays a spike. Only a
        # channel in its band when the gap came: one already flagged is in a fault, which a
        # glitch (a failed or impossible reading) must not cut short to two more readings
        s = self._s
        if s[5] == 2:
            order = self._order
            for j in range(s[1]):
                i = 40 + 22 * j
                if not s[i] and (c < 0 or order[j] == c):
                    s[i] = max(0, s[21] - 2)

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
