"""`edgewatch flash` / `make flash`: inputs checked before the board is touched, the exact esptool
command lines, and the MicroPython image download (from a local HTTP server, never the internet).

There is no ESP32 here: esptool itself is run with the built command lines against a port that
does not exist, which proves the real esptool accepts them (it gets as far as opening the port).
"""

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from edgewatch.board.flash import check_image, download, esptool_commands, flash_plan
from edgewatch.board.virtual_board import VirtualBoard
from edgewatch.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
EW = [str(Path(sys.executable).parent / "edgewatch")]


def ew(*args, env=None, cwd=None):
    return subprocess.run(EW + list(args), capture_output=True, text=True, timeout=120, env=env,
                          cwd=cwd or ROOT)


def fake_image(path: Path) -> Path:
    path.write_bytes(b"\xe9" + bytes(4095))  # an ESP image starts with 0xE9
    return path


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_esptool_command_lines_are_exact(tmp_path):
    img = tmp_path / "fw.bin"
    erase, write = esptool_commands("esp32", "/dev/ttyUSB0", 0x1000, img, 460800)
    base = [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0",
            "--baud", "460800"]
    assert erase == base + ["erase-flash"]
    assert write == base + ["write-flash", "0x1000", str(img)]
    erase, write = esptool_commands("esp32s3", "/dev/ttyACM0", 0, img, 921600)
    assert write[-3:] == ["write-flash", "0x0", str(img)] and "esp32s3" in write


def test_real_esptool_accepts_the_command_lines(tmp_path):
    img = fake_image(tmp_path / "fw.bin")
    for cmd in esptool_commands("esp32", "/dev/edgewatch-no-such-port", 0x1000, img):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert "No such option" not in out and "Usage:" not in out, out
        assert "Could not open /dev/edgewatch-no-such-port" in out  # it parsed, then tried the port


def test_board_files_give_chip_offset_and_image():
    from edgewatch.board.catalog import load_board

    chip, offset, image = flash_plan(load_board("esp32-devkitc-dht22"))
    assert (chip, offset) == ("esp32", 0x1000) and image.endswith(".bin")
    assert flash_plan(load_board("esp32-devkitc-shtc3"))[:2] == ("esp32", 0x1000)
    chips = {}
    for p in (ROOT / "boards").glob("*.json"):
        if not p.stem.startswith("_"):
            chip, offset, image = flash_plan(load_board(p.stem))
            chips[chip] = offset
            assert image.endswith(".bin")
    # MicroPython's images go at 0x1000 on the ESP32 and at 0x0 on the S3 and C3
    assert chips == {"esp32": 0x1000, "esp32s3": 0, "esp32c3": 0}


def test_image_checks(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        check_image(tmp_path / "missing.bin")
    (tmp_path / "x.bin").write_bytes(b"PK\x03\x04 not an image")
    with pytest.raises(UserError, match="not an ESP firmware image"):
        check_image(tmp_path / "x.bin")
    assert check_image(fake_image(tmp_path / "ok.bin")) == tmp_path / "ok.bin"


def test_download_from_a_local_mirror_and_offline_error(tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    fake_image(served / "ESP32_GENERIC-test.bin")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/"
        got = download("ESP32_GENERIC-test.bin", base=base, cache=tmp_path / "cache")
        assert got.read_bytes() == (served / "ESP32_GENERIC-test.bin").read_bytes()
        check_image(got)
        with pytest.raises(UserError, match="FIRMWARE=path/to/ESP32_GENERIC-gone.bin"):
            download("ESP32_GENERIC-gone.bin", base=base, cache=tmp_path / "cache")
    finally:
        httpd.shutdown()
    # offline: a closed port stands for no internet
    from edgewatch.services.broker import free_port

    with pytest.raises(UserError, match="could not download"):
        download("ESP32_GENERIC-x.bin", base=f"http://127.0.0.1:{free_port()}/",
                 cache=tmp_path / "cache")


def test_cli_errors_are_one_line_and_nothing_reaches_the_board(tmp_path):
    img = fake_image(tmp_path / "fw.bin")
    one_line_error(ew("flash", "--port", "", "--firmware", str(img)), "no serial port given")
    one_line_error(ew("flash", "--port", "/dev/edgewatch-nope", "--firmware", str(img)),
                   "/dev/edgewatch-nope does not exist")
    with VirtualBoard(tmp_path / "flash") as vb:
        one_line_error(ew("flash", "--port", vb.port, "--board", "no-such-board",
                          "--firmware", str(img)), "no-such-board")
        one_line_error(ew("flash", "--port", vb.port, "--board", "esp32-devkitc-dht22",
                          "--firmware", str(tmp_path / "missing.bin"), "--no-deploy"),
                       "missing.bin does not exist")
        (tmp_path / "bad.bin").write_bytes(b"hello")
        one_line_error(ew("flash", "--port", vb.port, "--firmware", str(tmp_path / "bad.bin"),
                          "--no-deploy"), "not an ESP firmware image")
        # deploy's inputs are checked before the erase too: no model blob here
        one_line_error(ew("flash", "--port", vb.port, "--firmware", str(img),
                          "--model", str(tmp_path / "nomodel")),
                       "no model blob")
        (tmp_path / "bad.ewb").write_bytes(b"EWB1" + bytes(60))  # a damaged blob, not just a missing one
        one_line_error(ew("flash", "--port", vb.port, "--firmware", str(img), "--dry-run",
                          "--model", str(tmp_path / "bad.ewb")),
                       "bad.ewb", "not a valid model blob")
        one_line_error(ew("flash", "--port", vb.port, "--firmware", str(img), "--no-deploy",
                          "--baud", "-5"), "--baud -5: expected 300..5000000")
        assert vb.received == 0


def test_make_flash_dry_run_prints_the_esptool_commands(tmp_path):
    img = fake_image(tmp_path / "fw.bin")
    with VirtualBoard(tmp_path / "flash") as vb:
        r = subprocess.run(["make", "-s", "flash", f"PORT={vb.port}", f"FIRMWARE={img}",
                            "BOARD=esp32-devkitc-dht22", "DEPLOY_ARGS=--dry-run --no-deploy"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("flash: ")]
        assert lines == [
            f"flash: -m esptool --chip esp32 --port {vb.port} --baud 460800 erase-flash",
            f"flash: -m esptool --chip esp32 --port {vb.port} --baud 460800 write-flash 0x1000 {img}",
        ]
        assert vb.received == 0
        r = subprocess.run(["make", "-s", "flash", "PORT=", f"FIRMWARE={img}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "no serial port given" in r.stderr


def test_wait_for_micropython_answers_on_a_booted_board_and_fails_in_one_line(tmp_path):
    from edgewatch.board.flash import wait_for_micropython

    with VirtualBoard(tmp_path / "flash") as vb:
        wait_for_micropython(vb.port, timeout=20)  # the REPL answers: returns
    with pytest.raises(UserError, match="did not answer within 3 s"):
        wait_for_micropython(str(tmp_path / "no-port"), timeout=3)
