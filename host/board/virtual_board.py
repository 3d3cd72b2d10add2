"""A virtual MicroPython board on a pseudo-terminal, for deploy, REPL and tests without hardware.

The board speaks what a real ESP32 running MicroPython speaks on its USB serial port:
the friendly REPL (banner, ``>>>``, ``...`` continuation with auto-indent, paste mode,
Ctrl-A/B/C/D/E), the raw REPL (``raw REPL; CTRL-B to exit``, ``OK``, output, ``\\x04``,
error, ``\\x04``, ``>``) and raw-paste mode (``\\x05A\\x01`` → ``R\\x01`` + window size,
``\\x01`` flow control). So the real ``mpremote`` and ``ampy`` drive it unchanged.

Code runs in the real MicroPython unix port (``host/core/mpy.py``) with the board's heap
budget. The board's flash is a host folder mounted as ``/`` inside MicroPython
(``vfs.VfsPosix``), so ``mpremote fs cp/ls/rm``, ``mip``-style ``/lib`` installs and
``ampy put/ls`` land in that folder and nowhere else on the host. The stand-ins for
``machine``/``dht``/``network`` (host/board/standins, precompiled) are the board's ROM, mounted
read-only at ``/.frozen`` (the name real boards give their frozen modules), loaded before
anything runs and first on ``sys.path`` after the current folder, like built-in modules on a board. Host folders
the stand-ins replay data from (``--host-dir``, e.g. the folder of ``$EDGEWATCH_SIM``)
are mounted read-only at their own paths.

Power-on and ``machine.reset()`` run ``boot.py`` then ``main.py`` like a board; a soft
reset (Ctrl-D) restarts the interpreter and, in the friendly REPL, runs them again.
Ctrl-C interrupts running code (SIGINT → ``KeyboardInterrupt``). Output with no
program on the other end of the port is dropped, as a UART would, so a deployed
firmware keeps running after ``mpremote`` disconnects.

    .venv/bin/python -m edgewatch.board.virtual_board --flash build/vboard --board esp32-devkitc-dht22
    # prints: virtual board on /dev/pts/5 (flash build/vboard) ...
    make deploy PORT=/dev/pts/5 ; make repl PORT=/dev/pts/5
"""

from __future__ import annotations

import argparse
import codeop
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
import warnings
from pathlib import Path

from edgewatch.core import mpy

BANNER = (b"MicroPython v1.29.0 on 2026-01-01; edgewatch virtual board (%s) with MicroPython unix port"
          b"\r\nType \"help()\" for more information.\r\n")
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
PASTE_WINDOW = 128  # half of MICROPY_REPL_STDIN_BUFFER_MAX, as on the boards
SENTINEL = b"\x00\xffEW"  # frames agent control messages inside the interpreter's stdout

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5

# Runs inside MicroPython: mounts the flash folder as "/", then executes what the host
# sends ("E"xec file-mode, "S"ingle REPL line, "F"ile to run if present) in one shared
# __main__ namespace, and frames the end of each run on stdout.
AGENT = r'''
import sys, io, os, vfs, time
_IN = sys.stdin.buffer
_OUT = sys.stdout.buffer
def _ctl(kind, payload=b''):
    _OUT.write(%(sentinel)r + kind + str(len(payload)).encode() + b'\n')
    if payload:
        _OUT.write(payload)
def _hard_reset(*a):
    _ctl(b'H')
    while True:
        time.sleep(1)
def _soft_reset(*a):
    _ctl(b'Q')
    while True:
        time.sleep(1)
vfs.umount('/')
vfs.mount(vfs.VfsPosix(%(flash)r), '/')
if %(rom)r:
    vfs.mount(vfs.VfsPosix(%(rom)r), '/.frozen', readonly=True)
for _d in %(host_dirs)r:
    vfs.mount(vfs.VfsPosix(_d), _d, readonly=True)
os.chdir('/')
# The ROM's machine stand-in shares the firmware's SHTC3 constants: import it once from a
# read-only view of firmware/, then drop that view so only deployed files are importable.
if %(fw)r:
    vfs.mount(vfs.VfsPosix(%(fw)r), '/.fw', readonly=True)
sys.path[:] = ['/.frozen', '/.fw']
try:
    import machine
    # the board's other ROM modules, loaded now as a board has them before anything runs: a
    # stand-in first imported by the firmware would load on its heap at the worst moment
    # (`import network` in App.__init__ needs ~4 KB free for the .mpy, 12 KB+ for source;
    # on a board it allocates nothing), and sim_heap's allowance counts all of them loaded
    for _m in %(rom_modules)r:
        try:
            __import__(_m)
        except ImportError:
            pass
    try:
        machine.reset = _hard_reset
        machine.soft_reset = _soft_reset
    except AttributeError:
        # a built-in machine module is read-only: stand in front of it
        class _Machine:
            reset = staticmethod(_hard_reset)
            soft_reset = staticmethod(_soft_reset)
            def __getattr__(self, name):
                return getattr(machine, name)
        sys.modules['machine'] = _Machine()
except ImportError:
    pass
for _k in list(sys.modules):
    if getattr(sys.modules[_k], '__file__', '').startswith('/.fw/'):
        del sys.modules[_k]
if %(fw)r:
    vfs.umount('/.fw')
sys.path[:] = ['', '/.frozen', '/lib']
_g = {'__name__': '__main__'}
def _read(n):
    data = b''
    while n is None or len(data) < n:
        try:
            chunk = _IN.readline() if n is None else _IN.read(n - len(data))
        except KeyboardInterrupt:
            continue
        if not chunk:
            sys.exit(0)
        data += chunk
        if n is None:
            return data
    return data
def _run(kind, data):
    if kind == b'!':  # Ctrl-C came while the interpreter was starting: it hits this code first
        raise KeyboardInterrupt
    if kind == b'F':
        try:
            src = open(data.decode()).read()
        except OSError:
            return
        code = compile(src, data.decode(), 'exec')
    else:
        code = compile(data, '<stdin>', 'single' if kind == b'S' else 'exec')
    del data
    exec(code, _g)
_ctl(b'R')
while True:
    head = _read(None)
    kind = head[:1]
    intr = head[1:2] == b'!'
    data = _read(int(head[2:] if intr else head[1:]))
    if intr:
        kind = b'!'
        data = None
    err = b''
    done = b'D'
    try:
        _run(kind, data)
    except SystemExit:
        done = b'Q'
    except BaseException as e:
        s = io.StringIO()
        sys.print_exception(e, s)
        err = s.getvalue().encode()
        s = None
    data = None
    _ctl(done, err)
'''


def _needs_more(src: str) -> bool:
    """True when a friendly-REPL entry is an unfinished statement (prompt ``...``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return codeop.compile_command(src, "<stdin>", "single") is None
        except (SyntaxError, ValueError, OverflowError):
            return False  # MicroPython reports the error itself


def _cook(data: bytes, last: int) -> bytes:
    """LF → CRLF as a board's UART stdout does (a CR already in front is kept)."""
    out = bytearray()
    for b in data:
        if b == 10 and last != 13:
            out += b"\r\n"
        else:
            out.append(b)
        last = b
    return bytes(out)


class VirtualBoard:
    """A MicroPython board on a pty: ``.port`` is the device path to hand to mpremote/ampy."""

    def __init__(self, flash: str | os.PathLike, heap: str | None = None, board: str | None = None,
                 rom: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 name: str | None = None, host_dirs: list[str | os.PathLike] | None = None):
        self.flash = Path(flash).resolve()
        self.flash.mkdir(parents=True, exist_ok=True)
        self.board = board
        if heap is None and board:
            from edgewatch.board.catalog import load_board
            from edgewatch.board.fwrun import sim_heap

            # the board's budget for the firmware; the stand-ins (C modules on a board) on top
            heap = sim_heap(load_board(board)["heap_budget"])
        self.heap = heap or mpy.DEFAULT_HEAP
        from edgewatch.board.fwrun import ROM_MODULES, build_mpy

        if rom is None:  # the stand-ins precompiled, as a board's frozen modules are ('': none)
            rom = build_mpy()[0]
        self.rom = str(Path(rom).resolve()) if rom and Path(rom).is_dir() else ""
        self.env = dict(env or {})
        self.name = (name or board or "esp32").encode()
        self.port = ""
        self._master = -1
        self._proc: subprocess.Popen | None = None
        self._inbox: queue.Queue[int] = queue.Queue()
        self._done: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self._busy = False
        self._ready = threading.Event()  # the interpreter has started and takes commands
        self._pending_int = False
        self._write_lock = threading.Lock()
        self._last_out = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="vboard-")
        self._agent_file = Path(self._tmp.name) / "_vboard_agent.py"
        # host folders the stand-ins read (replayed CSV, simulation JSON), read-only, same path
        dirs = [str(Path(d).resolve()) for d in host_dirs or []]
        self._agent_file.write_text(AGENT % {"sentinel": SENTINEL, "flash": str(self.flash),
                                              "rom": self.rom, "rom_modules": ROM_MODULES, "host_dirs": dirs,
                                              "fw": str(mpy.FIRMWARE) if self.rom else ""})
        self.mode = "friendly"
        self.resets = 0  # hard resets, for tests
        self.received = 0  # bytes received on the port: tests check a refused command sent none

    # ---- life cycle -------------------------------------------------------------------
    def start(self) -> VirtualBoard:
        """Open the pty and power the board on (boot.py, main.py, friendly REPL)."""
        master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        # Closing our slave end lets the master see HUP while no program has the port open,
        # which is how the board knows to drop output nobody reads.
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        for target in (self._read_port, self._process):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        self._inbox.put(-1)  # power-on, handled by the processor thread
        return self

    def stop(self) -> None:
        """Power off: stop the interpreter and close the pty."""
        self._stop.set()
        self._inbox.put(-3)
        self._kill_agent()
        for t in self._threads:
            t.join(5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        self._tmp.cleanup()

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the serial line --------------------------------------------------------------
    def _client_present(self) -> bool:
        p = select.poll()
        p.register(self._master, select.POLLIN | select.POLLOUT)
        for _, ev in p.poll(0):
            if ev & select.POLLHUP:
                return False
        return True

    def _write(self, data: bytes) -> None:
        """Send bytes to the host; drop them when no program has the port open (a UART)."""
        if not data or self._master < 0:
            return
        with self._write_lock:
            view = memoryview(data)
            deadline = time.monotonic() + 2.0
            while view and not self._stop.is_set():
                if not self._client_present():
                    return
                try:
                    n = os.write(self._master, view)
                    view = view[n:]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return  # a reader that stopped reading: drop, as a UART would
                    select.select([], [self._master], [], 0.05)
                except OSError:
                    return

    def _out(self, data: bytes) -> None:
        """Program output: cooked like MicroPython's stdout on a UART."""
        if data:
            cooked = _cook(data, self._last_out)
            self._last_out = data[-1]
            self._write(cooked)

    def _read_port(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self._master], [], [], 0.1)
            if not r:
                continue
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.05)  # EIO: nobody has the port open
                continue
            self.received += len(data)
            for b in data:
                if b == CTRL_C and self._busy:
                    self._interrupt()  # Ctrl-C reaches running code at once, never queued
                else:
                    self._inbox.put(b)

    # ---- the interpreter --------------------------------------------------------------
    def _start_agent(self) -> None:
        self._kill_agent()
        env = dict(os.environ)
        env.pop("MICROPYPATH", None)
        env.update(self.env)
        self._done = queue.Queue()
        self._ready = threading.Event()
        self._pending_int = False
        argv = mpy.command(script=self._agent_file, heap=self.heap)
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env, cwd=str(self.flash),
                                      start_new_session=True)
        t = threading.Thread(target=self._read_agent, args=(self._proc, self._done), daemon=True)
        t.start()

    def _kill_agent(self) -> None:
        proc, self._proc = self._proc, None
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def _interrupt(self) -> None:
        proc = self._proc
        if not self._ready.is_set():
            # the interpreter is still starting (a SIGINT now would kill its host process):
            # the code it runs first gets the KeyboardInterrupt instead
            self._pending_int = True
        elif proc and proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)

    def _read_agent(self, proc: subprocess.Popen, done: queue.Queue) -> None:
        buf = b""
        fd = proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                if buf:
                    self._out(buf)
                done.put((b"X", str(proc.wait()).encode()))
                return
            buf += chunk
            while True:
                i = buf.find(SENTINEL)
                if i < 0:
                    # keep a possible partial sentinel at the end for the next read
                    keep = next((k for k in range(len(SENTINEL) - 1, 0, -1)
                                 if buf.endswith(SENTINEL[:k])), 0)
                    self._out(buf[:len(buf) - keep])
                    buf = buf[len(buf) - keep:]
                    break
                self._out(buf[:i])
                nl = buf.find(b"\n", i)
                if nl < 0:
                    buf = buf[i:]
                    break
                kind = buf[i + len(SENTINEL):i + len(SENTINEL) + 1]
                size = int(buf[i + len(SENTINEL) + 1:nl])
                if len(buf) < nl + 1 + size:
                    buf = buf[i:]
                    break
                payload = buf[nl + 1:nl + 1 + size]
                buf = buf[nl + 1 + size:]
                if kind == b"R":
                    self._ready.set()
                else:
                    done.put((kind, payload))

    def _exec(self, kind: bytes, data: bytes) -> tuple[bytes, bytes]:
        """Run code in the interpreter and wait: ("D", err) done, "Q" soft reset, "H" hard reset, "X" died."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._start_agent()
            proc = self._proc
        self._busy = True
        try:
            while not self._ready.wait(0.1):
                if proc.poll() is not None or self._stop.is_set():
                    break
            flag = b""
            if self._pending_int:
                self._pending_int = False
                flag = b"!"
            try:
                proc.stdin.write(kind + flag + str(len(data)).encode() + b"\n" + data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the interpreter died or the board is powering off: reported below
            while True:
                try:
                    return self._done.get(timeout=0.2)
                except queue.Empty:
                    if self._stop.is_set():
                        return b"X", b"stopped"
        finally:
            self._busy = False

    # ---- what the board does with each received byte ----------------------------------
    def _process(self) -> None:
        st = {"line": bytearray(), "cont": False, "paste": None, "fpaste": False, "esc": 0,
              "orig": 0, "prev": 0}
        while not self._stop.is_set():
            c = self._inbox.get()
            if c == -3:
                return
            if c == -1:
                self._boot(hard=True)
                self._reset_state(st)
                continue
            if self.mode == "raw":
                self._raw_char(c, st)
            else:
                self._friendly_char(c, st)

    @staticmethod
    def _reset_state(st: dict) -> None:
        st.update(line=bytearray(), cont=False, paste=None, fpaste=False, esc=0, orig=0)

    def _boot(self, hard: bool) -> None:
        """Hard reset (power-on, machine.reset) or soft reset: fresh interpreter, boot.py, main.py."""
        while not self._stop.is_set():
            if hard:
                self.mode = "friendly"
                self.resets += 1
            else:
                self._write(b"MPY: soft reboot\r\n")
            self._start_agent()
            status = self._exec(b"F", b"boot.py")
            if status[0] == b"D":
                self._print_error(status[1])
                if self.mode == "friendly":
                    status = self._exec(b"F", b"main.py")
                    if status[0] == b"D":
                        self._print_error(status[1])
            if status[0] == b"H":
                hard = True
                continue
            if status[0] in (b"Q", b"X"):
                if status[0] == b"X":
                    self._write(b"\r\n[virtual board: interpreter exited (%s), resetting]\r\n" % status[1])
                    time.sleep(0.5)  # a crash-looping board should not spin the host
                hard = status[0] == b"X"
                continue
            break
        self._prompt_after_boot()

    def _prompt_after_boot(self) -> None:
        if self.mode == "raw":
            self._write(RAW_BANNER + b">")
        else:
            self._write(BANNER % self.name + b">>> ")

    def _print_error(self, err: bytes) -> None:
        if err:
            self._out(self._clean_traceback(err))

    def _clean_traceback(self, err: bytes) -> bytes:
        # the agent's own frame is not the user's business
        name = self._agent_file.name.encode()
        return b"\n".join(ln for ln in err.split(b"\n") if name not in ln)

    def _run_and_report(self, kind: bytes, data: bytes, raw: bool) -> bool:
        """Run code; in raw mode frame output/error with EOFs. False when the board reset."""
        status, payload = self._exec(kind, data)
        if status == b"D":
            if raw:
                self._write(b"\x04")
                self._out(self._clean_traceback(payload))
                self._write(b"\x04")
            else:
                self._print_error(payload)
            return True
        if status == b"Q":
            if raw:
                self._write(b"\x04\x04")
            self._boot(hard=False)
        else:
            if status == b"X":
                self._write(b"\r\n[virtual board: interpreter exited (%s), resetting]\r\n" % payload)
            self._boot(hard=True)
        return False

    def _raw_char(self, c: int, st: dict) -> None:
        line = st["line"]
        if st["paste"] is not None:
            self._paste_char(c, st)
        elif c == CTRL_A:
            if len(line) == 2 and line[0] == CTRL_E:
                st["line"] = bytearray()
                if line[1] == ord("A"):
                    self._write(b"R\x01" + PASTE_WINDOW.to_bytes(2, "little") + b"\x01")
                    st["paste"] = bytearray()
                    st["window"] = PASTE_WINDOW
                else:
                    self._write(b"R\x00>")
                return
            st["line"] = bytearray()
            self._write(RAW_BANNER + b">")
        elif c == CTRL_B:
            self._write(b"\r\n")
            self.mode = "friendly"
            self._reset_state(st)
            self._write(BANNER % self.name + b">>> ")
        elif c == CTRL_C:
            st["line"] = bytearray()
        elif c == CTRL_D:
            self._write(b"OK")
            st["line"] = bytearray()
            if not line:
                self._write(b"\r\n")
                self._boot(hard=False)
                return
            if self._run_and_report(b"E", bytes(line), raw=True):
                self._write(b">")
        else:
            line.append(c)

    def _paste_char(self, c: int, st: dict) -> None:
        buf = st["paste"]
        if c in (CTRL_C, CTRL_D):
            st["paste"] = None
            self._write(b"\x04")  # end of data acknowledged
            if c == CTRL_C:
                self._write(b"\x04Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n\x04>")
                return
            if self._run_and_report(b"E", bytes(buf), raw=True):
                self._write(b">")
            return
        buf.append(c)
        st["window"] -= 1
        if st["window"] == 0:
            self._write(b"\x01")  # room for another window
            st["window"] = PASTE_WINDOW

    def _friendly_char(self, c: int, st: dict) -> None:
        line = st["line"]
        if st["fpaste"]:
            if c == CTRL_C:
                self._write(b"\r\n")
                self._restart_input(st)
            elif c == CTRL_D:
                self._write(b"\r\n")
                src = bytes(line)
                self._reset_state(st)
                if self._run_and_report(b"E", src, raw=False):
                    self._restart_input(st)
            else:
                line.append(c)
                self._write(b"\r\n=== " if c == 13 else bytes([c]))
            return
        if st["esc"]:
            # swallow VT100 sequences (arrows, home/end): ESC [ ... final byte
            st["esc"] += 1
            if st["esc"] > 2 and 0x40 <= c <= 0x7E or st["esc"] > 8:
                st["esc"] = 0
            return
        empty = len(line) == st["orig"]
        if CTRL_A <= c <= CTRL_E and (empty or c == CTRL_C) and not (st["cont"] and c in (CTRL_A, CTRL_B, CTRL_E)):
            self._friendly_ctrl(c, st)
        elif c == 27:
            st["esc"] = 1
        elif c in (13, 10):
            if c == 10 and st["prev"] == 13:
                st["prev"] = c
                return
            st["prev"] = c
            self._write(b"\r\n")
            self._friendly_enter(st)
            return
        elif c in (8, 127):
            if len(line) > st["orig"]:
                del line[-1]
                self._write(b"\b \b")
        elif c >= 32 or c == 9:
            if c == 9:
                c = 32  # no completion here: a tab indents
            line.append(c)
            self._write(bytes([c]))
        st["prev"] = c

    def _friendly_ctrl(self, c: int, st: dict) -> None:
        if c == CTRL_A:
            self._write(b"\r\n")
            self.mode = "raw"
            self._reset_state(st)
            self._write(RAW_BANNER + b">")
        elif c == CTRL_B:
            self._write(b"\r\n" + BANNER % self.name)
            self._restart_input(st)
        elif c == CTRL_C:
            self._write(b"\r\n")
            self._restart_input(st)
        elif c == CTRL_D:
            if st["cont"]:
                self._write(b"\r\n")
                self._friendly_exec(st)
                return
            self._write(b"\r\n")
            self._reset_state(st)
            self._boot(hard=False)
        elif c == CTRL_E:
            self._write(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
            self._reset_state(st)
            st["fpaste"] = True

    def _restart_input(self, st: dict) -> None:
        self._reset_state(st)
        self._write(b">>> ")

    def _friendly_enter(self, st: dict) -> None:
        line = st["line"]
        current = bytes(line[st["orig"]:])
        if not st["cont"] and not line:
            self._write(b">>> ")
            return
        if st["cont"] and not current.strip():
            del line[st["orig"]:]
            self._friendly_exec(st)
            return
        if _needs_more(line.decode(errors="replace")):
            indent = len(current) - len(current.lstrip(b" "))
            if current.rstrip().endswith(b":"):
                indent += 4
            line.append(10)
            st["orig"] = len(line)
            st["cont"] = True
            line += b" " * indent
            self._write(b"... " + b" " * indent)
            return
        self._friendly_exec(st)

    def _friendly_exec(self, st: dict) -> None:
        src = bytes(st["line"]).rstrip()
        self._reset_state(st)
        if self._run_and_report(b"S", src, raw=False):
            self._restart_input(st)


class Terminal:
    """Runs an interactive program (``mpremote repl``, ``make repl``) on its own pty, as a user would.

    ``expect(b"text")`` waits for output and returns everything up to it; ``send(b"...")``
    types. Used by the tests and the demo to hold REPL sessions with the real tools.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=cwd, start_new_session=True)
        os.close(slave)
        self._fd = master
        self.buf = b""

    def expect(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        """Read until `pattern` appears; return the output up to and including it."""
        end = time.monotonic() + timeout
        while pattern not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited {timeout}s for {pattern!r}; got {self.buf[-400:]!r}")
            r, _, _ = select.select([self._fd], [], [], min(left, 0.1))
            if r:
                try:
                    chunk = os.read(self._fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"program ended waiting for {pattern!r}; got {self.buf[-400:]!r}")
                self.buf += chunk
        i = self.buf.index(pattern) + len(pattern)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def send(self, data: bytes) -> None:
        os.write(self._fd, data)

    def wait_raw(self, timeout: float = 10.0) -> None:
        """Wait until the program has put its terminal in raw mode (keys now reach it as typed)."""
        import termios

        end = time.monotonic() + timeout
        while termios.tcgetattr(self._fd)[3] & termios.ICANON:
            if time.monotonic() > end:
                raise TimeoutError("the program did not switch its terminal to raw mode")
            time.sleep(0.02)

    def close(self, timeout: float = 5.0) -> int:
        """Wait for the program to end (killing it after `timeout`); its exit status."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGTERM)
            rc = self.proc.wait(5)
        os.close(self._fd)
        return rc


def main(argv: list[str] | None = None) -> int:
    """Run a virtual board until interrupted; print its port."""
    ap = argparse.ArgumentParser(prog="virtual_board", description=__doc__.split("\n\n")[0])
    ap.add_argument("--flash", default="build/vboard/flash", help="host folder used as the board's flash")
    ap.add_argument("--board", default=None, help="boards/<name>: sets the heap budget")
    ap.add_argument("--heap", default=None, help="heap size (overrides the board's), e.g. 96K")
    ap.add_argument("--port-file", default=None, help="also write the pty path to this file")
    ap.add_argument("--host-dir", action="append", default=[], metavar="DIR",
                    help="host folder visible read-only at the same path (data the stand-ins replay)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the interpreter (e.g. stand-in settings)")
    args = ap.parse_args(argv)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"virtual_board: --env {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        env[key] = value
    try:
        vb = VirtualBoard(args.flash, heap=args.heap, board=args.board, env=env,
                          host_dirs=args.host_dir).start()
    except Exception as exc:  # an unknown board, an unwritable folder: one line
        print(f"virtual_board: {exc}", file=sys.stderr)
        return 2
    print(f"virtual board on {vb.port} (flash {vb.flash}, heap {vb.heap})", flush=True)
    if args.port_file:
        Path(args.port_file).write_text(vb.port + "\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    vb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
