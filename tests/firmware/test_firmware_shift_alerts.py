"""A lasting shift is one event: under the real firmware (MicroPython, real Mosquitto) the
board flags every shifted sample in its telemetry but sends the shift alert only when the
shift starts and again every shift window while it lasts."""


import numpy as np
from edgewatch.board import fwrun
from edgewatch.services.broker import Broker
from edgewatch.training.export import blob
from edgewatch.training.export.shiftcal import ShiftCal

from tests.firmware.test_firmware_e2e import BOARD, collected, sim, test_config

WINDOW = 10
SAMPLES = 60


def test_a_lasting_shift_alerts_at_its_start_and_every_window(tmp_path, tiny_model_dir):
    spec = blob.read((tiny_model_dir / "model.ewb").read_bytes())
    # a level no greenhouse reading is near: every sample is shifted once the mean is full
    spec.shift = ShiftCal(WINDOW, 3.0, np.array([-100.0, -100.0]), np.array([1.0, 1.0]), np.eye(2))
    spec.still = 0
    model = tmp_path / "shifted.ewb"
    model.write_bytes(blob.write(spec))
    with Broker(tmp_path / "broker") as broker:
        listener = fwrun.Listener(broker.port)
        flash = fwrun.prepare(tmp_path / "b", "sh-1", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                              sim=sim([]), model=model, **test_config(stop_after=SAMPLES))
        proc = fwrun.run(flash, BOARD, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        listener.settle()
        listener.close()
    tel, alerts, _ = collected(listener, "sh-1")
    assert len(tel) == SAMPLES
    tel = sorted(tel, key=lambda t: t.seq)  # seqs are shared with alerts: use sample order
    index = {t.seq: i for i, t in enumerate(tel)}
    flagged = [i for i, t in enumerate(tel) if "shift" in t.faults]
    assert flagged == list(range(WINDOW - 1, SAMPLES))  # every sample once W are in
    assert all(tel[i].anomaly for i in flagged)
    sent = sorted(index[a.sample] for a in alerts if a.rule == "shift")
    assert sent == list(range(WINDOW - 1, SAMPLES, WINDOW))  # its start, then every window
    assert {a.channel for a in alerts if a.rule == "shift"} <= {"temperature", "humidity"}
