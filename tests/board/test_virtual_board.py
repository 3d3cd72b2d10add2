"""The virtual board speaks MicroPython's REPL protocols well enough for the real mpremote and ampy.

Every test drives the board through a real pty with the real tools (or, for the protocol
details, byte by byte with pyserial), and code runs in the real MicroPython unix port.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from edgewatch.board.virtual_board import Terminal, VirtualBoard

BIN = Path(sys.executable).parent
MPREMOTE = str(BIN / "mpremote")
AMPY = str(BIN / "ampy")


def mpr(port, *args, timeout=60, check=True):
    r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"mpremote {args} -> {r.returncode}: {r.stdout}{r.stderr}")
    return r


def ampy(port, *args, timeout=60):
    r = subprocess.run([AMPY, "--port", port, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"ampy {args}: {r.stdout}{r.stderr}"
    return r.stdout


@pytest.fixture
def board(tmp_path):
    flash = tmp_path / "flash"
    with VirtualBoard(flash, heap="64K") as vb:
        yield vb


def test_mpremote_exec_eval_files_and_errors(board, tmp_path):
    port, flash = board.port, board.flash
    assert mpr(port, "exec", "print(6*7)").stdout.strip() == "42"
    assert mpr(port, "eval", "'x' * 3").stdout.strip() == "xxx"
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("VALUE = 41 + 1\n")
    blob = os.urandom(3000)  # several 256-byte chunks and raw-paste windows
    (src / "blob.bin").write_bytes(blob)
    mpr(port, "fs", "cp", str(src / "blob.bin"), ":blob.bin", "+", "fs", "cp", "-r",
        str(src / "pkg"), ":")
    assert (flash / "blob.bin").read_bytes() == blob
    assert (flash / "pkg" / "mod.py").is_file()
    ls = mpr(port, "fs", "ls").stdout
    assert "blob.bin" in ls and "pkg/" in ls
    # code on the board imports what was copied, with '' on sys.path as on a board
    assert mpr(port, "exec", "from pkg.mod import VALUE; print(VALUE)").stdout.strip() == "42"
    # and from /lib, a folder without __init__ as mip installs packages (umqtt/simple.mpy)
    mpr(port, "fs", "mkdir", ":lib", "+", "fs", "mkdir", ":lib/nspkg", "+", "fs", "cp",
        str(src / "pkg" / "mod.py"), ":lib/nspkg/mod.py")
    assert mpr(port, "exec", "from nspkg.mod import VALUE; print(VALUE)").stdout.strip() == "42"
    got = tmp_path / "back.bin"
    mpr(port, "fs", "cp", ":blob.bin", str(got))
    assert got.read_bytes() == blob
    mpr(port, "fs", "rm", ":blob.bin")
    assert not (flash / "blob.bin").exists()
    # an exception is the raw REPL's error part: mpremote prints it and exits 1
    r = mpr(port, "exec", "def f():\n  1/0\nf()", check=False)
    assert r.returncode == 1
    assert "ZeroDivisionError" in r.stdout and 'File "<stdin>", line 2, in f' in r.stdout
    assert "_vboard_agent" not in r.stdout  # the board's own machinery stays out of tracebacks


def test_flash_is_a_jail_and_heap_is_the_budget(board):
    port, flash = board.port, board.flash
    mpr(port, "exec", "f = open('/escape.txt', 'w'); f.write('x'); f.close()")
    assert (flash / "escape.txt").read_text() == "x"
    assert not Path("/escape.txt").exists()
    listing = mpr(port, "exec", "import os; print(sorted(os.listdir('/')))").stdout
    assert "escape.txt" in listing and "'usr'" not in listing and "'etc'" not in listing
    total = int(mpr(port, "exec", "import gc; gc.collect(); print(gc.mem_free() + gc.mem_alloc())")
                .stdout.strip())
    assert 60 * 1024 <= total <= 64 * 1024
    r = mpr(port, "exec", "b = bytearray(200 * 1024)", check=False)
    assert r.returncode == 1 and "MemoryError" in r.stdout


def test_rom_modules_are_loaded_before_anything_runs(board):
    # a board's network/dht/machine are C in its ROM: the firmware's `import network` must not
    # load them onto its heap mid-boot (it took 12 KB+ of contiguous free heap as source and
    # failed a deploy's second boot with MemoryError)
    out = mpr(port := board.port, "exec", "import sys\nfor m in ('machine', 'network', 'dht', 'sim_flash', "
              "'sim_i2c'):\n    print(m, getattr(sys.modules.get(m), '__file__', None))").stdout
    got = dict(line.split() for line in out.strip().splitlines())
    assert got and all(f.startswith("/.frozen/") and f.endswith(".mpy") for f in got.values()), got
    assert mpr(port, "exec", "import network; print(network.STA_IF)").stdout.strip() == "0"


def test_state_persists_until_soft_reset_and_reset_runs_main(board):
    port, flash = board.port, board.flash
    mpr(port, "exec", "x = 5")
    # mpremote soft-resets on connect, like a board: state is gone
    r = mpr(port, "exec", "print(x)", check=False)
    assert "NameError" in r.stdout
    # state survives within one connection (chained commands)
    assert mpr(port, "exec", "y = 7", "+", "exec", "print(y)").stdout.strip() == "7"
    (flash / "boot.py").write_text("open('boots.txt', 'a').write('b')\n")
    (flash / "main.py").write_text("open('boots.txt', 'a').write('m')\n")
    resets = board.resets
    mpr(port, "reset")  # machine.reset(): the board reboots and runs boot.py then main.py
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (flash / "boots.txt").read_text().count("m") < 1:
        time.sleep(0.05)
    assert board.resets == resets + 1
    # mpremote's raw-REPL soft reset runs boot.py but not main.py, as on a board
    text = (flash / "boots.txt").read_text()
    assert text.startswith("b") and text.count("m") == 1 and "bm" in text


def test_firmware_keeps_running_with_nobody_listening_and_ctrl_c_stops_it(board):
    port, flash = board.port, board.flash
    # a chatty main loop: with no program on the port its output is dropped, never blocking
    (flash / "main.py").write_text(
        "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n, 'x' * 200)\n"
        "    if n % 50 == 0:\n        open('n.txt', 'w').write(str(n))\n    time.sleep_ms(1)\n")
    mpr(port, "reset")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and int((flash / "n.txt").read_text() or 0
                                               if (flash / "n.txt").exists() else 0) < 500:
        time.sleep(0.1)
    assert int((flash / "n.txt").read_text()) >= 500  # >100 KB printed to nobody, no stall
    # mpremote's Ctrl-C interrupts main.py; the REPL answers again
    assert mpr(port, "exec", "print('back')", timeout=20).stdout.strip() == "back"


def test_raw_repl_and_raw_paste_bytes(board):
    with serial.Serial(board.port, 115200, timeout=5) as s:
        def read_until(end):
            data = s.read_until(end)
            assert data.endswith(end), data
            return data

        s.write(b"\r\x03\r\x01")
        read_until(b"raw REPL; CTRL-B to exit\r\n>")
        # plain raw REPL: code, Ctrl-D, "OK", output, EOF, error, EOF, prompt
        s.write(b"print('hi')\x04")
        assert read_until(b">") == b"OKhi\r\n\x04\x04>"
        s.write(b"raise ValueError('bad')\x04")
        out = read_until(b"\x04>")
        assert out.startswith(b"OK\x04Traceback") and b"ValueError: bad" in out
        # raw-paste: R\x01, window size, then flow control every window of bytes
        code = ("x = 0\n" + "x += 1\n" * 100 + "print(x)\n").encode()
        s.write(b"\x05A\x01")
        head = s.read(5)
        assert head[:2] == b"R\x01"
        window = int.from_bytes(head[2:4], "little")
        assert window == 128 and head[4:5] == b"\x01"
        credit, sent, acks = 2 * window, 0, 0
        while sent < len(code):
            if credit == 0:
                assert s.read(1) == b"\x01"
                acks += 1
                credit += window
            n = min(credit, len(code) - sent)
            s.write(code[sent:sent + n])
            sent += n
            credit -= n
        s.write(b"\x04")
        out = read_until(b"\x04>")
        while out.startswith(b"\x01"):  # window grants that were still in flight
            out = out[1:]
        assert out == b"\x04100\r\n\x04\x04>", out
        assert acks >= len(code) // window - 2
        # an unknown raw-paste command is refused, then the prompt comes back
        s.write(b"\x05B\x01")
        assert read_until(b">") == b"R\x00>"
        # Ctrl-B: back to the friendly REPL
        s.write(b"\x02")
        out = read_until(b">>> ")
        assert b"MicroPython" in out and b'Type "help()"' in out


def test_friendly_repl_session_with_mpremote(board):
    (board.flash / "main.py").write_text("print('main ran')\n")
    t = Terminal([MPREMOTE, "connect", board.port, "repl"])
    try:
        t.expect(b"to exit this shell\r\n")
        t.wait_raw()
        t.send(b"\r")
        t.expect(b">>> ")
        t.send(b"21 * 2\r")
        assert b"42\r\n" in t.expect(b">>> ")
        t.send(b"for i in range(3):\r")
        t.expect(b"...     ")  # continuation prompt with auto-indent
        t.send(b"print('row', i)\r")
        t.expect(b"... ")
        t.send(b"\r")
        out = t.expect(b">>> ")
        assert re.search(rb"row 0\r\nrow 1\r\nrow 2\r\n", out)
        t.send(b"\x05")  # paste mode: lines as typed, run on Ctrl-D
        t.expect(b"paste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
        t.send(b"def f(n):\r    return n * 3\rprint(f(14))\r")
        t.send(b"\x04")
        assert b"42\r\n" in t.expect(b">>> ")
        t.send(b"undefined_name\r")
        assert b"NameError" in t.expect(b">>> ")
        t.send(b"import time\r")
        t.expect(b">>> ")
        t.send(b"while True: time.sleep_ms(5)\r")
        t.expect(b"... ")
        t.send(b"\r")
        time.sleep(0.3)
        t.send(b"\x03")  # Ctrl-C interrupts the loop
        assert b"KeyboardInterrupt" in t.expect(b">>> ")
        t.send(b"\x04")  # Ctrl-D: soft reboot runs main.py again
        out = t.expect(b">>> ", timeout=15)
        assert b"MPY: soft reboot" in out and b"main ran" in out
        t.send(b"\x1d")  # Ctrl-] leaves mpremote
        assert t.close() == 0
    finally:
        if t.proc.poll() is None:
            t.close(0)


def test_ampy_put_ls_get_run_rm(board, tmp_path):
    port, flash = board.port, board.flash
    src = tmp_path / "hello.py"
    src.write_text("print('hello from', 'ampy')\n")
    ampy(port, "mkdir", "lib")
    ampy(port, "put", str(src), "lib/hello.py")
    assert (flash / "lib" / "hello.py").read_text() == src.read_text()
    assert "/lib/hello.py" in ampy(port, "ls", "-r")
    assert ampy(port, "get", "lib/hello.py").strip() == src.read_text().strip()
    assert ampy(port, "run", str(src)).strip() == "hello from ampy"
    ampy(port, "rm", "lib/hello.py")
    assert not (flash / "lib" / "hello.py").exists()


def test_command_line_prints_port_and_rejects_bad_env(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "edgewatch.board.virtual_board", "--flash", str(tmp_path),
                          "--env", "NOEQUALS"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "KEY=VALUE" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "edgewatch.board.virtual_board", "--flash",
                             str(tmp_path / "f"), "--heap", "48K"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = re.search(r"virtual board on (\S+)", line).group(1)
        assert mpr(port, "exec", "import sys; print(sys.platform)").stdout.strip() == "linux"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
