"""Model update over MQTT on the board side: bad blobs (tampered, unsigned) published with paho
are refused with status `error` and nothing stored; a signed one is verified, stored atomically,
hot-swapped and reported in status; the stored model survives a reboot."""

import json
from pathlib import Path

import pytest
from edgewatch.board import fwrun
from edgewatch.services.broker import Broker
from hostkit import wait_until

from tests.firmware.test_firmware_e2e import BOARD, sim, test_config

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


def _runs(listener, model_id, what):
    """From now on the board's telemetry has a band, and every record names `model_id`."""
    n = len(listener.json("telemetry"))
    wait_until(lambda: any(m["band"] for m in listener.json("telemetry")[n:]), 20, what=what)
    assert all(m["model"] == model_id for m in listener.json("telemetry")[n:])


def test_ota_model_verified_swapped_refused_and_kept(tmp_path, blob):
    from edgewatch.training.export.blob import read, sign

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
            _runs(listener, model_id, "telemetry with a band from the new model")
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
        listener.settle()
        listener.close()
    assert f"model {model_id} outbox" in proc.stdout
    assert all(st["model"] == model_id and "error" not in st for st in _status(listener)[k:]), [(s.get("model"), s.get("error")) for s in _status(listener)[k:]]


def test_board_shipped_with_a_model_takes_updates_and_refuses_oversized(tmp_path, blob):
    """A board that boots with a model on flash receives the next one into a file (no
    whole-payload object at the 96 KB budget), swaps it, then refuses a bad one and an
    oversized one while the model it runs stays in use and on flash."""
    from edgewatch.training.export.blob import read, sign, write

    key = bytes.fromhex(KEY_HEX)
    old_id = read(blob).model_id
    spec = read(blob)
    spec.model_id = f"{int(spec.model_id, 16) ^ 0xFFFFFFFF:08x}"
    newer = sign(write(spec), key)
    shipped = tmp_path / "shipped.ewb"
    shipped.write_bytes(blob)
    topic = "edgewatch/ota-2/model"
    with Broker(tmp_path / "broker") as broker:
        listener = fwrun.Listener(broker.port)
        flash = fwrun.prepare(tmp_path / "b", "ota-2", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                              sim=sim([]), model=shipped,
                              **test_config(stop_after=100000, ota_key=KEY_HEX))
        proc = fwrun.start(flash, BOARD)
        try:
            wait_until(lambda: _status(listener), 20, what="first status")
            assert _status(listener)[0]["model"] == old_id
            for n in range(2):  # the first update and the next one, both with a model running
                want = spec.model_id if n == 0 else old_id
                payload = newer if n == 0 else sign(blob, key)
                listener.publish(topic, payload, retain=True)
                wait_until(lambda w=want: _status(listener)[-1]["model"] == w, 20,
                           what=f"model {want} in status")
                assert "error" not in _status(listener)[-1]
                assert (flash / "model.ewb").read_bytes() == payload
            tampered = bytearray(newer)
            tampered[len(tampered) // 2] ^= 0x01
            for bad, reason in ((bytes(tampered), "model: blob"), (bytes(20000), "model: blob of 20000")):
                k = len(_status(listener))
                listener.publish(topic, bad, retain=True)
                wait_until(lambda k=k: len(_status(listener)) > k, 20, what="status after a bad blob")
                st = _status(listener)[-1]
                assert st["error"].startswith(reason) and st["model"] == old_id, st
                assert read(((flash / "model.ewb").read_bytes()), key).model_id == old_id
                assert not (flash / "model.new").exists()
            _runs(listener, old_id, "telemetry with a band from the kept model")
        finally:
            proc.kill()
            proc.wait(10)
            listener.close()
        console = fwrun.console(flash)
        assert "Traceback" not in console and "MemoryError" not in console, console[-2000:]
