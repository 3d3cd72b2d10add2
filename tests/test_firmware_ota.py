"""Model update over MQTT on the board side: bad blobs (tampered, unsigned) published with paho
are refused with status `error` and nothing stored; a signed one is verified, stored atomically,
hot-swapped and reported in status; the stored model survives a reboot."""

import json
import time
from pathlib import Path

import pytest

from tests.hostkit import wait_until
from tests.test_firmware_e2e import BOARD, sim, test_config
from tools import fwrun
from tools.broker import Broker

KEY_HEX = "00112233445566778899aabbccddeeff"  # a test fleet key (config.json ota_key)


@pytest.fixture
def blob(request):
    if not (fwrun.mpy.FIRMWARE / "engine.py").exists():
        pytest.skip("firmware/engine.py not written yet")
    try:
        folder = Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_model_dir fixture in tests/conftest.py yet")
    return (folder / "model.ewb").read_bytes()


def _status(listener):
    return [m for m in listener.json("status") if m.get("state") == "online"]


def test_ota_model_verified_swapped_refused_and_kept(tmp_path, blob):
    from training.blob import read, sign

    key = bytes.fromhex(KEY_HEX)
    signed = sign(blob, key)
    model_id = read(blob).model_id
    tampered = bytearray(signed)
    tampered[len(tampered) // 2] ^= 0x01
    topic = "edgewatch/ota-1/model"
    with Broker(tmp_path / "broker") as broker:
        listener = fwrun.Listener(broker.port)
        flash = fwrun.prepare(tmp_path / "b", "ota-1", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                              sim=sim([]), **test_config(stop_after=100000, ota_key=KEY_HEX))
        proc = fwrun.start(flash, BOARD)
        try:
            wait_until(lambda: _status(listener), 20, what="first status")
            assert _status(listener)[0]["model"] is None  # rules only at first
            for bad, reason in ((bytes(tampered), "model: "), (blob, "model: blob is not signed")):
                k = len(_status(listener))
                listener.publish(topic, bad, retain=True)
                wait_until(lambda k=k: len(_status(listener)) > k, 20, what="status after a bad blob")
                st = _status(listener)[-1]
                assert st["error"].startswith(reason) and st["model"] is None
                assert not (flash / "model.ewb").exists()
            listener.publish(topic, signed, retain=True)
            wait_until(lambda: _status(listener)[-1]["model"] == model_id, 20, what="model in status")
            assert "error" not in _status(listener)[-1]
            assert (flash / "model.ewb").read_bytes() == signed and not (flash / "model.ewb.tmp").exists()
            n = len(listener.json("telemetry"))
            wait_until(lambda: any(m["band"] for m in listener.json("telemetry")[n:]), 20,
                       what="telemetry with a band from the new model")
            assert all(m["model"] == model_id for m in listener.json("telemetry")[n:])
        finally:
            proc.kill()
            proc.wait(10)
        console = fwrun.console(flash)
        assert console.count("new model refused") == 2 and "Traceback" not in console
        # reboot: the stored model is back; the retained copy of it is recognised, not re-parsed
        (flash / "config.json").write_text(json.dumps(
            dict(json.loads((flash / "config.json").read_text()), stop_after=20)))
        k = len(_status(listener))
        proc = fwrun.run(flash, BOARD, timeout=60)
        assert proc.returncode == 0, proc.stdout[-2000:]
        time.sleep(0.3)
        listener.close()
    assert f"model {model_id} outbox" in proc.stdout
    assert all(st["model"] == model_id and "error" not in st for st in _status(listener)[k:]), [(s.get("model"), s.get("error")) for s in _status(listener)[k:]]
