"""Config on the board: bad files give one clear line and no crash loop; every board of boards/
runs the firmware within its heap budget."""

import json

import pytest
from edgewatch.board import fwrun
from edgewatch.board.catalog import board_names, heap_budget, load_board
from edgewatch.core import mpy
from edgewatch.services.broker import Broker
from hostkit import wait_until

from tests.firmware.test_firmware_e2e import collected, sim, summary, test_config

BOARD = "esp32-devkitc-dht22"
GOOD = {"device": "gh-01", "board": BOARD, "broker": "mqtt://127.0.0.1:1883"}

BAD = [
    (None, "config.json: missing (the device config; `make deploy` copies it)"),
    ("{not json", "config.json: not valid JSON"),
    ({"board": BOARD, "broker": "mqtt://h"}, "config.json: device: missing"),
    (dict(GOOD, device="gh 01/x"), "config.json: device: expected 1-32 characters of A-Z a-z 0-9 _ -, got 'gh 01/x'"),
    (dict(GOOD, broker="http://h:80"), "config.json: broker: 'http://h:80' is not an mqtt:// or mqtts:// URL"),
    (dict(GOOD, broker="mqtt://h:99999"), "config.json: broker: bad port in 'mqtt://h:99999'"),
    (dict(GOOD, broker="mqtts://h"), "config.json: ca: an mqtts:// broker needs the CA certificate file"),
    (dict(GOOD, broker="mqtt://a:1883,mqtts://b"), "config.json: broker: mix of mqtt:// and mqtts:// URLs"),
    (dict(GOOD, broker="mqtt://a:1883,b:1883"), "config.json: broker: 'b:1883' is not an mqtt:// or mqtts:// URL"),
    (dict(GOOD, period_ms="60"), "config.json: period_ms: expected an integer in 10..86400000, got '60'"),
    (dict(GOOD, perod_ms=60), "config.json: unknown key 'perod_ms'"),
    (dict(GOOD, detector={"k": -1}), "config.json: detector.k: expected a number in 0.1..100, got -1"),
    (dict(GOOD, detector={"stuck": 3}), "config.json: unknown key 'detector.stuck'"),
    (dict(GOOD, user="u"), "config.json: user and password: give both or neither"),
    (dict(GOOD, ota_key="xyz"), "config.json: ota_key: expected at least 32 hex digits"),
    (dict(GOOD, log="loud"), 'config.json: log: expected "sample" or "quiet"'),
    (dict(GOOD, board="esp32-s3-devkitc"), "config.json: board: 'esp32-s3-devkitc', but board.json is for 'esp32-devkitc-dht22'"),
    (dict(GOOD, sensor="shtc3"), "config.json: sensor: 'shtc3', but board 'esp32-devkitc-dht22' has a 'dht22'"),
]


def test_bad_configs_give_one_clear_line(tmp_path):
    (tmp_path / "board.json").write_text(json.dumps(load_board(BOARD)))
    code = ["import config"]
    for i, (cfg, _) in enumerate(BAD):
        if cfg is not None:
            text = cfg if isinstance(cfg, str) else json.dumps(cfg)
            (tmp_path / f"c{i}.json").write_text(text)
        code.append(f"""
try:
    config.load('c{i}.json' if {cfg is not None} else 'config.json')
    print('accepted')
except config.ConfigError as e:
    print(str(e).replace('c{i}.json', 'config.json'))""")
    (tmp_path / "good.json").write_text(json.dumps(GOOD))
    code.append("c = config.load('good.json'); print(c['host'], c['port'], c['tls'], c['period_ms'], c['detector']['k'])")
    # a cluster's nodes: tried in turn from the first
    (tmp_path / "list.json").write_text(json.dumps(dict(GOOD, broker="mqtt://a:1883,mqtt://b:1884")))
    code.append("c = config.load('list.json'); print(c['host'], c['port'], c['broker'])")
    out = mpy.run(code="\n".join(code), heap=heap_budget(BOARD), cwd=tmp_path).stdout.splitlines()
    assert out[:-2] == [msg for _, msg in BAD]
    assert out[-2] == "127.0.0.1 1883 False 60000 None"
    assert out[-1] == "a 1883 [('a', 1883, False), ('b', 1884, False)]"  # one URL: kept as given


def test_invalid_config_waits_and_recovers_without_crash_loop(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        flash = fwrun.prepare(tmp_path / "b", "cfg-1", BOARD, "http://127.0.0.1:1883", sim=sim([]),
                              **test_config(stop_after=5, drain_ms=5000))
        listener = fwrun.Listener(broker.port)
        proc = fwrun.start(flash, BOARD)
        line = ("edgewatch: config error: config.json: broker: 'http://127.0.0.1:1883' is not an "
                "mqtt:// or mqtts:// URL (retrying in {} s)")
        wait_until(lambda: line.format(4) in fwrun.console(flash), 15, what="second config error")
        assert proc.poll() is None, "the board keeps waiting, it does not exit or reset"
        console = fwrun.console(flash)
        assert line.format(2) in console and "Traceback" not in console
        # the user fixes the file (REPL / make deploy): the waiting board picks it up
        cfg = json.loads((flash / "config.json").read_text())
        cfg["broker"] = f"mqtt://127.0.0.1:{broker.port}"
        (flash / "config.json").write_text(json.dumps(cfg))
        assert proc.wait(30) == 0, fwrun.console(flash)[-2000:]
        listener.settle()
        listener.close()
    tel, _, _ = collected(listener, "cfg-1")
    assert len(tel) == 5
    assert fwrun.console(flash).count("config error") <= 4  # 2 s, 4 s, 8 s: growing, not a loop


@pytest.mark.parametrize("board", board_names())
def test_every_board_runs_within_its_heap_budget(tmp_path, board):
    faults = [{"kind": "crc", "row": 5, "attempts": 20}]  # SHTC3 CRC / DHT checksum faults
    with Broker(tmp_path / "broker") as broker:
        listener = fwrun.Listener(broker.port)
        flash = fwrun.prepare(tmp_path / "b", "hb-1", board, f"mqtt://127.0.0.1:{broker.port}",
                              sim=sim(faults), **test_config(stop_after=40))
        proc = fwrun.run(flash, board, timeout=60)
        assert proc.returncode == 0, proc.stdout[-3000:]
        listener.settle()
        listener.close()
    s = summary(proc.stdout)
    tel, alerts, _ = collected(listener, "hb-1")
    # 20 attempts = 5 failed samples x 4, flagged in the telemetry; one episode: one message
    assert len(tel) == 40 and sum("read" in t.faults for t in tel) == 5
    assert [a.rule for a in alerts] == ["read"]
    assert s["heap_min_free"] >= 4096
    print(f"\n{board}: heap budget {heap_budget(board)}, min free {s['heap_min_free']} B")
