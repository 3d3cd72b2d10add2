"""End to end: simulated boards fill the collector's database, retrain publishes a signed model,
the boards verify and use it, and refuse tampered ones while keeping the model they run.

Everything is real: Mosquitto (host/services/broker.py), the `edgewatch collect` process writing
SQLite, the firmware under the MicroPython unix port at the board's heap budget
(host/board/sim.py), `edgewatch retrain --publish` and `edgewatch publish-model` as a user runs
them, paho as the observer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edgewatch.board.sim import Fleet
from edgewatch.core.errors import UserError
from edgewatch.core.schema import Status, Telemetry, parse
from edgewatch.core.store import Store
from edgewatch.services.broker import Broker
from edgewatch.services.registry import Registry
from edgewatch.training.export import blob as tblob

EW = str(Path(sys.executable).with_name("edgewatch"))
KEY = "5e1f0c2a9b8d7e6f11223344556677889900aabbccddeeff0011223344556677"
WRONG_KEY = "00" * 32


def dk(device: str, master: str = KEY) -> bytes:
    """A board's own OTA key, derived from the fleet master key (as deploy and sim do)."""
    return tblob.derive_key(bytes.fromhex(master), device)


NEW = 2**32 - 1  # an OTA version above any the boards accepted (a bad signature never counts)
DEVICES = ("sim-01", "sim-02")
ROWS = 260  # per board before retraining: enough for a window-10 TCN and its holdout
PERIOD = 0.05
pytestmark = pytest.mark.slow  # trains a model and runs two boards


class Observer:
    """Every status and telemetry message of the fleet, parsed by the host's parser."""

    def __init__(self, port: int):
        self.status: dict[str, list[Status]] = {d: [] for d in DEVICES}
        self.telemetry: dict[str, list[Telemetry]] = {d: [] for d in DEVICES}
        self.retained: dict[str, bytes] = {}
        self.cond = threading.Condition()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("edgewatch/#", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(5)

    def _on(self, _c, _u, m):
        with self.cond:
            if m.topic.endswith("/model"):
                self.retained[m.topic.split("/")[1]] = bytes(m.payload)
            else:
                rec = parse(m.topic, m.payload)
                if isinstance(rec, Status):
                    self.status[rec.device].append(rec)
                elif isinstance(rec, Telemetry):
                    self.telemetry[rec.device].append(rec)
            self.cond.notify_all()

    def wait(self, predicate, timeout: float, what: str, boards: Fleet | None = None):
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    # what the boards said is the first thing to read when this fails
                    said = "" if boards is None else "\n".join(
                        f"[{d.device}] {line}" for d in boards.devices
                        for line in [x for x in d.log if not x.startswith("alert:")][-6:])
                    pytest.fail(f"timed out waiting for {what}\n{said}")
                self.cond.wait(left)

    def publish(self, device: str, payload: bytes) -> None:
        self.c.publish(f"edgewatch/{device}/model", payload, qos=1, retain=True).wait_for_publish(5)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _rows(url: str) -> dict[str, int]:
    try:
        store = Store(url, create=False)
    except UserError:  # the collector has not created its tables yet
        return {}
    try:
        return dict(store.query("SELECT device, COUNT(*) FROM {telemetry} GROUP BY device"))
    finally:
        store.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Broker, collector and two boards (no model yet) running; the database filled."""
    tmp = tmp_path_factory.mktemp("ota")
    db = f"sqlite:///{tmp / 'telemetry.db'}"
    with Broker(tmp / "broker") as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        obs = Observer(broker.port)
        col_log = open(tmp / "collector.log", "w")  # closed in the finally below
        collector = subprocess.Popen([EW, "collect", "--mqtt", url, "--db", db, "--no-discovery"],
                                     stdout=col_log, stderr=subprocess.STDOUT)
        boards = Fleet(tmp / "fleet", len(DEVICES), url, None, faults=[], clean=len(DEVICES),
                       period=PERIOD, samples=0, extra={"ota_key": KEY})
        boards.start()
        try:
            deadline = time.monotonic() + 120
            while True:
                counts = _rows(db) if (tmp / "telemetry.db").exists() else {}
                if all(counts.get(d, 0) >= ROWS for d in DEVICES):
                    break
                if time.monotonic() > deadline or not all(d.running for d in boards.devices):
                    logs = "\n".join(f"[{d.device}] " + "\n".join(d.log[-8:]) for d in boards.devices)
                    pytest.fail(f"database not filled ({counts}); boards:\n{logs}\ncollector:\n"
                                + (tmp / "collector.log").read_text()[-2000:])
                time.sleep(0.5)
            yield {"tmp": tmp, "db": db, "url": url, "obs": obs, "boards": boards,
                   "registry": tmp / "registry"}
        finally:
            boards.stop()
            collector.terminate()
            collector.wait(10)
            col_log.close()
            obs.close()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEWATCH_MODEL_KEY", "OTA_KEY")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def deployed(fleet):
    """`edgewatch retrain --publish`: the first model, approved, signed and picked up."""
    r = subprocess.run([EW, "retrain", "--data", fleet["db"], "--registry", str(fleet["registry"]),
                        "--work", str(fleet["tmp"] / "work"), "--epochs", "2", "--publish",
                        "--wait-s", "60", "--broker", fleet["url"]],
                       capture_output=True, text=True, timeout=300, cwd=fleet["tmp"],
                       env=_env(EDGEWATCH_OTA_KEY=KEY))
    assert r.returncode == 0, r.stdout + r.stderr
    assert KEY not in r.stdout + r.stderr  # the key is never printed
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    return summary


def test_retrain_publishes_and_boards_use_the_signed_model(fleet, deployed):
    obs, mid = fleet["obs"], deployed["model_id"]
    assert deployed["approved"] and deployed["parent"] is None
    assert deployed["published"] == {d: "ok" for d in DEVICES}, deployed
    reg = Registry(fleet["registry"])
    entry = reg.get(deployed["entry"])
    assert entry.meta["data"]["rows"] >= ROWS * 0.9  # the database's own rows trained it
    assert {d: reg.deployed(d).id for d in DEVICES} == {d: entry.id for d in DEVICES}
    # What went over the air is the registry's blob, signed for each board under its own key.
    for d in DEVICES:
        payload = obs.retained[d]
        assert tblob.is_signed(payload) and tblob.read(payload, dk(d)).model_id == mid
        for other in (bytes.fromhex(KEY), dk(d, WRONG_KEY), *(dk(o) for o in DEVICES if o != d)):
            with pytest.raises(tblob.BlobError):
                tblob.read(payload, other)
    for d in DEVICES:
        # the status reports the new model, and the board runs it: its telemetry carries
        # the model id with a prediction and a band once the window has filled
        assert any(s.model == mid and not s.error for s in obs.status[d])
        obs.wait(lambda d=d: any(t.model == mid and t.pred for t in obs.telemetry[d]), 30,
                 f"{d} telemetry predicted by {mid}")
        # and it was written to flash, so a reboot keeps it
        flash = fleet["tmp"] / "fleet" / d / "model.ewb"
        assert flash.read_bytes() == obs.retained[d]


@pytest.mark.parametrize("how", ["flipped", "wrong-key", "truncated", "other-shape", "rollback",
                                 "other-board", "fleet-key"])
def test_board_refuses_a_bad_model_and_keeps_its_own(fleet, deployed, how):
    obs, mid, dev = fleet["obs"], deployed["model_id"], "sim-01"
    good = Registry(fleet["registry"]).get(deployed["entry"]).blob()
    signed = tblob.sign(good, dk(dev), NEW)
    if how == "flipped":
        bad = bytearray(signed)
        bad[len(bad) // 2] ^= 0x01  # one weight bit
        bad = bytes(bad)
    elif how == "wrong-key":
        bad = tblob.sign(good, dk(dev, WRONG_KEY), NEW)
    elif how == "rollback":  # correctly signed for this board, but older than what it runs
        bad = tblob.sign(good, dk(dev), 1000)
    elif how == "other-board":  # correctly signed, newer, for sim-02: bound to sim-02
        bad = tblob.sign(good, dk("sim-02"), NEW)
    elif how == "fleet-key":  # what a fleet-wide key would have signed
        bad = tblob.sign(good, bytes.fromhex(KEY), NEW)
    elif how == "truncated":
        bad = signed[: len(signed) - 40]
    else:
        # correctly signed, but for three channels: the board's sensor has two
        spec = tblob.read(good)
        spec.names = spec.names + ["pressure"]
        spec.offset, spec.scale = spec.offset + [0.0], spec.scale + [1.0]
        spec.shift = spec.band = None  # their calibration is for two channels
        # (its signature holds, so its version becomes the board's floor: now, not NEW)
        bad = tblob.sign(tblob.write(spec), dk(dev), int(time.time()))
    before = len(obs.status[dev])
    t_before = len(obs.telemetry[dev])
    obs.publish(dev, bad)
    obs.wait(lambda: any(s.error for s in obs.status[dev][before:]), 20, f"{dev} refusing ({how})",
             fleet["boards"])
    refusal = next(s for s in obs.status[dev][before:] if s.error)
    assert refusal.error.startswith("model:") and refusal.model == mid, refusal
    if how == "rollback":
        assert "not newer" in refusal.error
    # the old model stays in use and on flash
    obs.wait(lambda: any(t.model == mid and t.pred for t in obs.telemetry[dev][t_before + 5:]), 30,
             f"{dev} still predicting with {mid}")
    flash = (fleet["tmp"] / "fleet" / dev / "model.ewb").read_bytes()
    assert tblob.read(flash, dk(dev)).model_id == mid
    # the other board never saw it
    assert mid and all(not s.error for s in obs.status["sim-02"])


def test_publish_model_cli(fleet, deployed):
    reg = fleet["registry"]
    entry = deployed["entry"]

    def ew(*args, **env):
        return subprocess.run([EW, "publish-model", "--broker", fleet["url"], *args],
                              capture_output=True, text=True, timeout=60, cwd=fleet["tmp"],
                              env=_env(**env))

    # the approved model again, by registry id, to the other board: already running it
    r = ew("--model", entry[:8], "--registry", str(reg), "--device", "sim-02", "--wait-s", "20",
           EDGEWATCH_OTA_KEY=KEY)
    assert r.returncode == 0 and "sim-02: model" in r.stdout and " ok" in r.stdout, r.stderr
    assert KEY not in r.stdout + r.stderr
    for args, env, needle in (
        (["--model", entry, "--registry", str(reg), "--device", "sim-02"], {}, "EDGEWATCH_OTA_KEY is not set"),
        (["--model", entry, "--registry", str(reg), "--device", "sim-02"], {"EDGEWATCH_OTA_KEY": "not hex"},
         "expected hex digits"),
        (["--model", entry, "--registry", str(reg), "--device", "bad/id"], {"EDGEWATCH_OTA_KEY": KEY},
         "--device 'bad/id'"),
        (["--model", str(fleet["tmp"] / "nope"), "--device", "sim-02"], {"EDGEWATCH_OTA_KEY": KEY},
         "no such model folder"),
    ):
        r = ew(*args, **env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # A new model for the whole fleet the collector knows (the same weights under a new
    # id, signed): both boards take it, sim-01 although it refused four blobs before.
    spec = tblob.read(Registry(reg).get(entry).blob())
    spec.model_id = f"{int(spec.model_id, 16) ^ 0xFFFFFFFF:08x}"
    newer = fleet["tmp"] / "newer.ewb"
    newer.write_bytes(tblob.write(spec))
    r = ew("--model", str(newer), "--fleet", "--db", fleet["db"], "--wait-s", "20",
           EDGEWATCH_OTA_KEY=KEY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(r.stdout.split()[::4]) == ["sim-01:", "sim-02:"] and r.stdout.count(" ok") == 2
    # a blob that is not a model is refused before anything is published
    junk = fleet["tmp"] / "junk.ewb"
    junk.write_bytes(b"EWB" + bytes(100))
    r = ew("--model", str(junk), "--device", "sim-02", EDGEWATCH_OTA_KEY=KEY)
    assert r.returncode == 2 and "model blob refused" in r.stderr, r.stderr
    assert tblob.read(fleet["obs"].retained["sim-02"], dk("sim-02")).model_id == spec.model_id


def test_clearing_the_retained_model_leaves_the_board_running_it(fleet, deployed):
    obs = fleet["obs"]
    mid = obs.status["sim-02"][-1].model  # whatever it runs now
    r = subprocess.run([EW, "publish-model", "--broker", fleet["url"], "--clear", "--device", "sim-02"],
                       capture_output=True, text=True, timeout=60, cwd=fleet["tmp"], env=_env())
    assert r.returncode == 0 and "cleared" in r.stdout, r.stderr
    obs.wait(lambda: obs.retained.get("sim-02") == b"", 10, "the retained model cleared")
    n = len(obs.telemetry["sim-02"])
    obs.wait(lambda: any(t.model == mid and t.pred for t in obs.telemetry["sim-02"][n + 3:]), 30,
             "sim-02 still predicting")
    assert mid and all(not s.error for s in obs.status["sim-02"])
