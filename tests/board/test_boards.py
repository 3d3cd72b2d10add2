"""boards/: every board resolves and validates; mistakes are one line naming file and field."""

import json
import shutil
import subprocess

import pytest
from edgewatch.board.catalog import BOARDS_DIR, BoardError, board_names, heap_budget, load_board
from hostkit import edgewatch


def test_the_boards_of_the_issue_exist_and_validate():
    names = board_names()
    assert {"esp32-devkitc-dht22", "esp32-devkitc-shtc3", "esp32-s3-devkitc",
            "esp32-c3-devkitm"} <= set(names)
    for name in names:
        b = load_board(name)
        assert b["name"] == name and b["heap_budget"] <= 96 * 1024
        assert b["flash_offset"] == {"esp32": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0"}[b["chip"]]
        assert b["micropython_image"].startswith(b["micropython_board"] + "-")
    assert load_board("esp32-devkitc-dht22")["pins"] == {"led": 2, "dht": 4}  # merged with the base
    assert load_board("esp32-devkitc-shtc3")["sensor"] == "shtc3"
    assert heap_budget("esp32-devkitc-dht22") == "96K" and heap_budget("esp32-c3-devkitm") == "80K"


@pytest.fixture
def folder(tmp_path):
    shutil.copy(BOARDS_DIR / "_base-esp32.json", tmp_path)
    return tmp_path


def _board(folder, name, **fields):
    data = {"extends": "_base-esp32", "description": "test", "sensor": "dht22", "pins": {"dht": 4}}
    data.update(fields)
    (folder / f"{name}.json").write_text(json.dumps(data))


@pytest.mark.parametrize("fields, message", [
    ({"chip": "esp8266"}, "boards/b.json: chip: expected one of esp32, esp32s3, esp32c3, got 'esp8266'"),
    ({"chip": "esp32s3"}, "boards/b.json: flash_offset: esp32s3 images are written at 0x0, got '0x1000'"),
    ({"heap_budget": 200000}, "boards/b.json: heap_budget: expected an integer in 16384..98304, got 200000"),
    ({"sensor": "bme280"}, "boards/b.json: sensor: expected one of dht11, dht22, shtc3, got 'bme280'"),
    ({"sensor": "shtc3"}, "boards/b.json: pins.sda: missing, a shtc3 needs pins sda, scl"),
    ({"pins": {"dht": 40}}, "boards/b.json: pins.dht: 40 is not a GPIO of esp32 (0..39)"),
    ({"pins": {"dht": 2}}, "boards/b.json: pins.dht: GPIO2 is already pins.led"),
    ({"pins": {"dht": 35}}, "boards/b.json: pins.dht: GPIO35 of esp32 is input-only"),
    ({"pinz": {"dht": 4}}, "boards/b.json: unknown key 'pinz' (known: chip, description, extends, "
                           "flash_offset, heap_budget, i2c, micropython_board, micropython_image, "
                           "pins, sensor, wdt_timeout_ms)"),
    ({"micropython_image": "firmware.bin"},
     "boards/b.json: micropython_image: expected 'ESP32_GENERIC-<date>-<version>.bin', got 'firmware.bin'"),
    ({"extends": "_nope"}, "boards/b.json: extends: no boards/_nope.json"),
])
def test_mistakes_are_one_clear_line(folder, fields, message):
    _board(folder, "b", **fields)
    with pytest.raises(BoardError) as err:
        load_board("b", folder)
    assert str(err.value) == message


def test_broken_json_cycles_and_unknown_names(folder):
    (folder / "b.json").write_text('{"extends": "_base-esp32",')
    with pytest.raises(BoardError, match=r"^boards/b.json: not valid JSON \("):
        load_board("b", folder)
    _board(folder, "c", extends="d")
    _board(folder, "d", extends="c")
    with pytest.raises(BoardError, match="extends itself"):
        load_board("c", folder)
    with pytest.raises(BoardError, match=r"^board 'zz': no boards/zz.json \(known: b, c, d\)$"):
        load_board("zz", folder)
    with pytest.raises(BoardError, match="expected a name like"):
        load_board("../etc/passwd", folder)


def test_cli_lists_and_prints_boards():
    cmd = edgewatch("boards")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "esp32-s3-devkitc" in out and "0x1000" in out and "80K" in out
    one = subprocess.run(cmd + ["esp32-devkitc-shtc3"], capture_output=True, text=True, check=True)
    assert json.loads(one.stdout)["pins"] == {"led": 2, "sda": 21, "scl": 22}
    bad = subprocess.run(cmd + ["nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("edgewatch boards: board 'nope': no boards/nope.json")
