"""The sampling loop: read, judge, queue on flash, send; sampling never waits for the network.

Every period: read the sensor (bounded retries), let the detector judge the
sample, append the telemetry and its alerts to the outbox, then spend what is
left of the period on the link: (re)connect with backoff, receive model updates,
and send the oldest queued records, each removed only after its PUBACK.
"""

import gc
import os
import time
from array import array
from binascii import crc32

gc.collect()
try:
    # imported first, while the heap is still in one piece (rules only without it)
    import engine
except ImportError:
    engine = None
try:
    # the rules' viper kernels next, also long-lived, while the heap is in one piece: their
    # native code is one 2 KB block, too big for the holes the set-up leaves (the detector
    # finds the module in sys.modules)
    import detk  # noqa: F401
except (ImportError, SyntaxError, ValueError):  # no viper emitter: plain code when needed
    pass

# A hole low in the heap for the sampling loop's call frames, freed by the first prediction.
# MicroPython puts a bytecode function's frame on the heap when its locals and stack pass
# 11 words (py/objfun.c, VM_MAX_STATE_ON_STACK): App.sample, Detector.step, Model.predict_q,
# Outbox.append_tel... take one each per sample, freed on return. Each such allocation
# searches the allocation table from the first free block for a run of its size (py/gc.c
# gc_alloc), and once the app is set up the heap's low part is small holes: the search
# crossed ~3,000 blocks a call, 20-25k of a sample's instructions on RV32, more or less
# with where the holes fell (a change that ran no new code moved the count by ~15 %).
# main.py makes this buffer before it imports the app, below all the app's blocks, and
# hands it over; the first sample with a prediction (the model's window full: on a board,
# not its first sample) frees it (0), after the long-lived blocks that first prediction
# makes (the telemetry's head among them); without a model, the first sample. From then
# the frames and each sample's short-lived objects find room at once in this hole, whole
# again after each collection. 1 KB: a sample's nested frames (~30 blocks) and its
# short-lived objects (~200 B) with room to spare.
# Long-lived blocks made later would take the hole, being the lowest free room (a
# connection's client: the sample went 132k -> 178k on RV32), so _guard takes it back
# before a connection attempt (App.run). A model received over the air is loaded by the app
# built again (apply_blob), behind a hole main.py makes again. None: no hole (a 64-bit port).
_FRAMES = None

# the _tag of the last model blob the set-up refused: a retained copy of it, delivered again
# at each connect, is dropped without restarting the app for it (apply_blob). Module state:
# it outlives the App across main.py's restarts
_REFUSED = None


def _guard():
    # long-lived blocks are about to be made (a (re)connection's client):
    # right after a collection the hole is the lowest free run of its size, so a new buffer
    # of its size is made there and they go elsewhere; the next sample frees it again
    global _FRAMES
    if _FRAMES == 0:
        _FRAMES = bytearray(1024)


_MW = array("i", bytes(16))  # detk.put's numbers of the telemetry's head (App.message)
try:
    # a board with the C kernels (rv32imc, engine.py) writes the telemetry's record with one
    # call of the C module (App.sample, outbox.Outbox.append_tel)
    from ewkern import tel as _tel
except ImportError:
    _tel = None


def _intern(name):
    # load a set-up module once now and drop it: the names it interns stay (the qstr pool
    # never shrinks), allocated here while the heap is in one piece rather than between the
    # model's and the detector's pieces when the module is loaded again (.mpy only: from
    # source the module stays, as the detector keeps it)
    import sys

    try:
        m = __import__(name)
    except ImportError:
        return
    if getattr(m, "__file__", "").endswith(".mpy"):
        sys.modules.pop(name, None)
        m.__dict__.clear()  # a stale word pointing at it would keep its code (see detector)


_intern("plan")  # the engine's planner, loaded with each model (engine.py)
_intern("detset")
_intern("outbox_boot")  # the outbox's boot code, dropped after boot (outbox.py)
_intern("schema")  # its names only: the module is imported again after the model (App.setup)
gc.collect()

import detector  # noqa: E402 (after the engine, on purpose)
import machine  # noqa: E402
import outbox  # noqa: E402
import sensors  # noqa: E402
from link import Link  # noqa: E402

schema = None  # the message builders: imported by App.setup, after the model

FW_VERSION = "0.1.0"
_SLACK_MS = 5  # stop sending this long before the next sample is due
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports with a 2000 epoch

wdt = None  # the hardware watchdog once started; main.py feeds it after a crash


NO_CLOCK = False  # simulation: config "sim_no_clock" (a board whose clock is never set)
AGE_RING = 256  # records whose age a board without a clock can tell (App.ages)


def unix_time():
    """Unix seconds when the clock is set (NTP), else None (the message carries its age)."""
    t = int(time.time()) + _EPOCH
    return t if t > 1600000000 and not NO_CLOCK else None


# The largest model blob received over the air; a bigger one is drained unstored and
# refused (a 96 KB board runs blobs of a few KB: window-10 TCN about 2.6 KB).
MAX_BLOB = 16384


def _read_blob(path):
    # the whole file in one bytearray of its exact size (read() grows and copies)
    buf = bytearray(os.stat(path)[6])
    with open(path, "rb") as f:
        f.readinto(buf)
    return buf


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _allocated():
    # bytes allocated since start, where the port counts them (unix: mem_total), else 0
    try:
        import micropython

        return micropython.mem_total()
    except (ImportError, AttributeError):
        return 0


def feed():
    """Feed the watchdog (no-op before it is started)."""
    if wdt is not None:
        wdt.feed()


def sim_flash_opener():
    """Simulation hook: the host stand-in's machine.flash_open (can tear a write, for the
    power-cut test) where it exists; open() on a board."""
    return getattr(machine, "flash_open", open)


class App:
    """One board: sensor, detector, outbox and link, wired from the config."""

    restart = False  # the set-up refused a received model: reset (otaboot.py; a class
    # attribute until then, so it costs the instance's dict nothing on the boards that
    # never receive one)

    def __init__(self, cfg, log=print):
        global wdt
        self.cfg = cfg
        self.log = log
        board = cfg["board_info"]
        kind = cfg["sensor"]
        self.device = dev = cfg["device"]
        self.names = list(sensors.NAMES)
        ob = cfg["outbox"]
        self.setup(sensors.RANGES[kind], cfg["detector"], cfg["fallback"], ob["file"],
                   ob["slots"], ob["slot_size"], sim_flash_opener())
        schema.EPOCH = self.outbox.epoch
        global NO_CLOCK
        NO_CLOCK = cfg.get("sim_no_clock") is True
        if wdt is None and board.get("wdt_timeout_ms"):
            wdt = machine.WDT(timeout=board["wdt_timeout_ms"])
        self.reader = sensors.Reader(sensors.make_sensor(kind, board, machine), kind,
                                     cfg["read_retries"], cfg["retry_ms"], feed=feed)
        wlan = None
        if cfg["wifi"]:
            import network

            wlan = network.WLAN(network.STA_IF)
        p = cfg["prefix"]
        self.t_tel = schema.topic(p, dev, "telemetry")
        self.t_alert = schema.topic(p, dev, "alert")
        self.t_status = schema.topic(p, dev, "status")
        self.t_model = schema.topic(p, dev, "model")
        self.link = Link(cfg, wlan, log, subscriptions=(self.t_model,),
                         will=(self.t_status, schema.will(dev)),
                         file=(self.t_model.encode(), self.new_file, MAX_BLOB, self._on_model_file),
                         on_connect=self.publish_status)
        self.started = time.ticks_ms()
        self.samples = self.sent = self.alerts = 0
        self.echo = cfg.get("log", "sample") != "quiet"
        if self.pending:  # a received model, the set-up through with it: stored (otaboot.py)
            __import__("otaboot").commit(self)
        gc.collect()
        self.heap_min = gc.mem_free()
        self._alloc0 = _allocated()
        self.last_status = self.started
        log("app: %s fw %s board %s sensor %s model %s outbox %d pending, epoch %d next seq %d"
            % (dev, FW_VERSION, board.get("name"), kind, self.model_id(), self.outbox.depth,
               self.outbox.epoch, self.outbox.next_seq))

    def setup(self, limits, params, fallback, path, slots, slot_size, opener=open):
        """Detector, model and outbox, in the order that fits a fragmented 80 KB heap (also
        host/board/rv32.py's make_app, the RV32 bench and tests): the long-lived blocks first
        (the ages ring, the detector's state), then the model (its file's bytes, the parser
        and the detector's set-up code come and go), then the outbox (its boot code comes
        and goes); the message builders (schema) between the model and the outbox."""
        self.ages(slots)
        # the telemetry's head, the model and clock state it was made for, detk.put: App.message
        self._th = self._tt = self._tm = self._tn = self._tp = None
        self.det = detector.Detector(self.names, limits, params, fallback)
        mf = self.cfg["model_file"]
        # a model received over the air (apply_blob); beside it otaboot's .err file
        self.new_file = (mf[:mf.rfind(".")] if "." in mf else mf) + ".new"
        self._rule_kernels(params)
        # a hole kept for the outbox's read buffer while the model is parsed: made last, it
        # found no block of its size (516 B) in the holes the parse leaves on the C3 (RV32).
        # Not on a 64-bit port (the unix port, the tests' and simulator's stand-in), whose
        # parse then finds no room itself
        hole = bytearray(slot_size + 4) if __import__("sys").maxsize < 1 << 32 else None
        self.model = None
        self.model_error = None
        self.pending = None  # (size, crc32, error) of a model received into model.new
        self.blob_tag = None  # _tag of the blob the model came from
        self._load_model()
        # the message builders after the model: their code goes into the room its parser
        # leaves, not between the pieces the parser needs in one
        global schema
        if schema is None:
            import schema
        hole = None  # noqa: F841 (freed: the outbox's buffers go there)
        self.outbox = outbox.Outbox(path, slots, slot_size, opener)
        self.boot_seq = self.outbox.next_seq

    def _rule_kernels(self, params):
        # the kernels of the rules the model on flash carries (its header's flags:
        # blob.FLAG_BAND 32, FLAG_SHIFT 4; without the band, seedband's), loaded before the model
        # is read: their native code is one block each (residual's band 2.7 KB, shift 1.2 KB), which the holes left once
        # the model is parsed do not hold. Other boards never load them.
        # the model to be loaded: a received one first (_load_model)
        try:
            with open(self.new_file if _exists(self.new_file) else self.cfg["model_file"],
                      "rb") as f:
                h = f.read(8)
        except OSError:
            return
        if engine is None or len(h) < 8 or h[:4] != b"EWMB":
            return
        flags = h[6] | h[7] << 8
        d = self.det
        if flags & 32 and params.get("band") != "seed" and d._resmod is None:
            d._resmod = d._load("residual")
        elif not flags & 32 or params.get("band") == "seed":
            d._load("seedband")  # the seed's band (kept in sys.modules for the set-up)
        if flags & 4 and params.get("shift_factor") != 0 and d._shiftmod is None:
            d._shiftmod = d._load("shift")

    # -- model -----------------------------------------------------------------
    def model_id(self):
        return self.model.model_id if self.model is not None else None

    def _load_model(self):
        # a model received over the air, or the reason the last one was refused: otaboot.py,
        # imported only then
        if _exists(self.new_file) or _exists(self.new_file[:-4] + ".err"):
            import sys

            import otaboot

            done = otaboot.load(self)
            del sys.modules["otaboot"]
            if done:
                return
        path = self.cfg["model_file"]
        try:
            blob = _read_blob(path)
        except OSError:
            self.log("app: no %s, rules only" % path)
            return
        # the key guards the network path; a file on flash was verified when it arrived
        # over the air or copied by hand (make deploy), so only its CRC is checked here
        m, err = self._verify(blob, None)
        if err:
            self.model_error = err
            self.log("app: %s refused (%s), rules only" % (path, err))
            return
        self.model = m
        # the blob's identity (apply_blob): its size, its file's CRC32 and its last 8 bytes
        # (the body's CRC32 and what precedes it; signed, the HMAC's end). Not the CRC32
        # alone: a blob ends with the CRC32 of what precedes it, so every whole unsigned
        # blob's file CRC32 is the same (0x2144DF1C, CRC-32's residue), and an unsigned
        # model was taken for the one running. Not the end alone: a blob corrupted on its
        # way keeps its original's end
        self.blob_tag = (len(blob), crc32(blob), bytes(blob[len(blob) - 8:]))

    def _verify(self, blob, key):
        # -> (model, None) with the detector switched to it, or (None, "model: reason")
        if engine is None:
            return None, "model: no engine on this board"
        try:
            gc.collect()  # the blob was just read: the parser gets the heap in as few holes as possible
            m = engine.Model(blob, key=key)
            if self.model is not None and m.model_id == self.model.model_id:
                return self.model, None
            self.det.set_model(m)
        except MemoryError as e:  # which block found no room: "allocating N bytes"
            return None, "model: does not fit in memory (%s)" % (e.args[0] if e.args else "")
        except Exception as e:  # engine.BlobError, detector.ModelMismatch
            return None, "model: %s" % (e.args[0] if e.args else type(e).__name__)
        return m, None

    def _on_model_file(self, size, crc, err):
        # runs inside umqtt (maybe mid-publish): the payload is in self.new_file; the
        # loop verifies it
        self.pending = (size, crc, err)

    def apply_blob(self):
        """A model received into model.new: True when the board is to reset for it (App.run
        returns, main.py resets; the set-up verifies, parses and stores it: _load_model).
        Not swapped here: in the running heap, in pieces after hours of samples and a
        connection, the C3's 80 KB held no room for the parse of a model that fits at boot
        (RV32, 2026-11-27: MemoryError of 361-2,691 B, escaping, or leaving the board with
        no model; an app built again in the same heap fared no better). Refused here, with
        no reset: what is not a model blob by its magic, the retained copy of the model we
        run, and the blob refused last (a retained message comes again at every connect)."""
        size, crc, err = self.pending
        self.pending = None
        new = self.new_file
        tag = 0  # none: not equal to a None blob_tag or _REFUSED
        if size and not err:
            try:
                with open(new, "rb") as f:
                    ok = f.read(4) == b"EWMB"
                    f.seek(size - 8)
                    tag = (size, crc, f.read(8))
            except OSError:
                ok = False
            err = None if ok else "model: not an edgewatch model blob"
        if not size or tag == self.blob_tag or tag == _REFUSED:
            # an empty retained message clears the topic, or the retained copy of the
            # model we run (or of the one refused): keep what we run
            _remove(new)
            return False
        if err:
            _remove(new)
            self.model_error = err
            self.log("app: new model refused: %s; keeping %s" % (err, self.model_id()))
            self.publish_status()
            return False
        self.log("app: model received (%d bytes): reset" % size)
        return True

    # -- messages --------------------------------------------------------------
    def publish_status(self):
        """Publish the retained status (called on each connect and after a model change)."""
        self.last_status = time.ticks_ms()
        ob = self.outbox
        err = self.model_error
        msg = schema.status(self.device, ob.last_seq, unix_time(), FW_VERSION, self.model_id(),
                            gc.mem_free(), ob.depth, ob.dropped,
                            time.ticks_diff(time.ticks_ms(), self.started) // 1000, err)
        self.link.publish(self.t_status, msg, retain=True)

    def rnd(self, x):
        """A reading as the sensor resolves it (a count or None as it is)."""
        if isinstance(x, float):
            return "%.*f" % (sensors.DECIMALS[self.reader.kind], x)
        return x

    def sample(self, missed):
        """Read, judge and queue one sample and its alerts (before anything is sent)."""
        values = self.reader.read()
        alerts = self.det.step(values, missed)
        t = unix_time()
        mid = self.model_id()
        faults = []
        for a in alerts:
            if a[0] not in faults:
                faults.append(a[0])
        d = self.det
        ob = self.outbox
        seq = ob.next_seq
        tk = 0 if t is not None else time.ticks_ms() + 1
        taken, n = self.taken, len(self.taken)
        taken[seq % n] = tk
        at = None
        if _tel is not None and self._nums(seq, t, values, faults, mid):
            # the record written by the C module straight into the outbox (append_tel):
            # nothing formatted in bytecode, no copy; the console line is its payload
            at = ob.append_tel(_tel, self._tt, len(self._th), _MW, d.fixed())
        if at is not None:
            m = (memoryview(ob.seg)[at[0]:at[1]], b"")
        else:
            m = self.message(seq, t, values, faults, mid)
        if self.echo:
            # the console's line per sample: the telemetry record (before the append, which
            # may reuse the buffer message wrote it in), the JSON MQTT
            # carries (no age), its bytes written to stdout as they are (MicroPython's takes
            # bytes): no second line formatted, no str built (each new str costs a search of
            # the interned names; the human line cost ~70 k instructions on RV32, 45% of the
            # sample's budget). `edgewatch logs` and the simulator print it as human text.
            w = _write
            if w is None:  # no stdout of its own (a log handed in): the record as text
                self.log((bytes(m[0]) + m[1]).decode())
            else:
                w(m[0])
                if m[1]:
                    w(m[1])
                w(b"\n")
        if at is None:  # (else queued by append_tel)
            ob.append(outbox.TELEMETRY, m[0], m[1])
        m = None
        if d.send:
            # one message per episode (detector.py): at its start and every resend_samples
            # while it lasts; the telemetry above flags every sample of it
            for a in alerts:
                taken[ob.next_seq % n] = tk
                ob.append(outbox.ALERT, schema.alert(self.device, ob.next_seq, t, seq, a, mid))
                self.alerts += 1
                r = self.rnd
                self.log("alert: %s %s%s%s sample=%d" % (
                    a[0], a[1] or "device", "" if a[2] is None else " value=%s" % r(a[2]),
                    "" if a[3] is None else " band=%s..%s" % (r(a[3]), r(a[4])), seq))
        self.samples += 1
        global _FRAMES
        if _FRAMES and (self._th is not None or self.model is None):
            # the telemetry's head made (long-lived, at the first sample with a prediction:
            # the model's window full), or no model to make one: the hole is the frames'
            # from the next collection on (above)
            _FRAMES = 0

    def message(self, seq, t, values, faults, mid):
        """The telemetry's two parts (schema.telemetry). A sample with a reading, a
        prediction and no fault is written by two native calls (detk.put: schema.head's
        text, then schema._BAND's, with the numbers in decimal: nothing formatted, nothing
        allocated but two views) into the outbox's read buffer, which only peek uses,
        between samples; the append that follows copies the record out of it. The others,
        and a port without the kernel, through schema.telemetry."""
        d = self.det
        if self._nums(seq, t, values, faults, mid):
            h = self._th
            put = self._tp
            b = schema._BAND
            buf = self.outbox.rbuf
            if put and len(h) + len(b) + 110 <= len(buf):  # 10 numbers of at most 11 characters
                mv = memoryview(buf)
                n = put(buf, h, _MW, len(h))
                return mv[:n], mv[n:n + put(mv[n:], b, d.fixed(), len(b))]
        return schema.telemetry(self.device, seq, t, values, d.fixed() if d.has_band else None,
                                faults, mid)

    def _nums(self, seq, t, values, faults, mid):
        # For a sample with a reading, a prediction and no fault (nearly every one): the
        # head's numbers into _MW (seq, t when set, the readings x 100) and the head made
        # for this model and clock state (rare: compared by identity, model_id() hands back
        # the model's own string); True. Else False (schema.telemetry formats it).
        if not self.det.has_band or faults or seq >= 1 << 30 or (t is not None and t >= 1 << 31):
            return False
        if mid is not self._tm or (t is None) is not self._tn:
            self._th = self._tt = None
            self._th = schema.head(self.device, t, mid)
            self._tt = self._th + schema._BAND  # the whole text, for the C module (sample)
            self._tm, self._tn = mid, t is None
            self._tp = getattr(self.det._k, "put", None)
        a = _MW
        a[0] = seq
        i = 1
        if t is not None:
            a[1] = t
            i = 2
        # in the sensor's range (no fault): a small integer
        a[i] = round(values[0] * 100)
        a[i + 1] = round(values[1] * 100)
        return True

    def drain(self, until):
        """Send queued records oldest first until `until` (ticks) or the link fails."""
        ob = self.outbox
        while ob.depth and self.link.up:
            r = ob.peek()
            if r is None:
                break
            kind, seq, payload = r
            if not self.link.publish(self.t_tel if kind == outbox.TELEMETRY else self.t_alert,
                                     self._aged(seq, payload)):
                break
            ob.ack()
            self.sent += 1
            if time.ticks_diff(until, time.ticks_ms()) <= 0:
                break

    def ages(self, slots):
        # Samples taken without a clock (t null) carry their age when sent: the ticks + 1 at
        # which each seq of this boot was taken (0: it has a time), a ring of the newest
        # AGE_RING seqs (1 KB; 4 h of samples at one a minute); older ones, and seqs from
        # before this boot, go without an age (the host stamps their arrival).
        # (the first seq of this boot: self.boot_seq, set once the outbox is read)
        self.taken = array("i", bytes(4 * min(slots, AGE_RING)))  # MicroPython: bytes = buffer

    def _aged(self, seq, payload):
        """The record as sent: with `"age": ms since it was taken` when it has no time and
        was taken in this boot and is among its newest AGE_RING (docs/messages.md)."""
        taken = self.taken
        tk = taken[seq % len(taken)]
        if not tk or seq < self.boot_seq or seq < self.outbox.next_seq - len(taken):
            return payload
        n = len(payload)
        if n < 2 or payload[n - 1] != 125:  # 125: "}"
            return payload
        # short-lived (a board without a clock only): no buffer kept for the board's life
        return bytes(payload[:n - 1]) + b',"age":%d}' % time.ticks_diff(time.ticks_ms() + 1, tk)

    # -- loop ------------------------------------------------------------------
    def run(self):
        """Sample every period forever (or `stop_after` samples in simulation); reset for a
        model received (apply_blob)."""
        cfg = self.cfg
        period = cfg["period_ms"]
        stop_after = cfg["stop_after"]
        status_every = cfg["status_every_ms"]
        link = self.link
        next_due = time.ticks_ms()
        last = None
        while not self.restart:
            now = time.ticks_ms()
            if time.ticks_diff(now, next_due) >= 0:
                missed = 0
                if last is not None:
                    missed = (time.ticks_diff(now, last) + period // 2) // period - 1
                last = now
                self.sample(missed if missed > 0 else 0)
                next_due = time.ticks_add(next_due, period)
                if time.ticks_diff(now, next_due) >= 0:  # after a stall: no burst of samples
                    next_due = time.ticks_add(now, period)
                gc.collect()
                free = gc.mem_free()
                if free < self.heap_min:
                    self.heap_min = free
                if not link.up and time.ticks_diff(link.next_try, time.ticks_ms()) < period:
                    _guard()  # a connection attempt this period: its client goes elsewhere
                if stop_after and self.samples >= stop_after:  # simulation hook
                    break
            if self._service_link(next_due):
                self.restart = True
                break
            if status_every and link.up and \
                    time.ticks_diff(time.ticks_ms(), self.last_status) > status_every:
                self.publish_status()
            feed()
            wait = time.ticks_diff(next_due, time.ticks_ms())
            if wait > 0:
                time.sleep_ms(wait if wait < 500 else 500)
        if self.restart:
            # a board resets: the heap as at boot for the new model (apply_blob); the unix
            # port, the host's stand-in with a heap to spare, builds the app again (main.py)
            link.close()
            self.outbox.close()
            if __import__("sys").platform != "linux":
                machine.reset()
            return True
        self._sim_finish()

    def _service_link(self, next_due):
        # link work: receive, a model received (True: restart for it), send
        self.link.service()
        if self.pending is not None and self.apply_blob():
            return True
        self.drain(time.ticks_add(next_due, -_SLACK_MS))
        return False

    # -- simulation hooks (host runs only; inert on a board) -------------------
    # config "stop_after" / "drain_ms" end a simulated run after N samples (see run()),
    # delivering the outbox first; machine.flash_open (the host stand-in) is the flash
    # that can tear a write for the power-cut test (sim_flash_opener, above the class).
    def _sim_finish(self):
        # simulation end: deliver what is queued, then report
        deadline = time.ticks_add(time.ticks_ms(), self.cfg["drain_ms"])
        while self.outbox.depth and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            self.link.service()
            self.drain(deadline)
            feed()
            if self.outbox.depth:
                time.sleep_ms(10)
        self.publish_status()
        per = (_allocated() - self._alloc0) // self.samples if self.samples else 0
        self.log("app: done samples=%d alerts=%d sent=%d outbox=%d dropped=%d skipped=%d "
                 "heap_min_free=%d alloc_per_sample=%d next_seq=%d"
                 % (self.samples, self.alerts, self.sent, self.outbox.depth, self.outbox.dropped,
                    self.outbox.skipped, self.heap_min, per, self.outbox.next_seq))


def run(cfg):
    """Build the app from a checked config and run it; True when it is to be built again."""
    return App(cfg).run()


# the console's per-sample line (App.sample): bytes written as they are (MicroPython's
# stdout takes bytes); None: through the app's log, as text (a harness's log). Defined
# last, after the code the set-up needs (App.setup)
_write = __import__("sys").stdout.write
