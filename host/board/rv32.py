"""A 32-bit RISC-V MicroPython (the ESP32-C3's instruction set) under QEMU, for tests and bench.

`build()` makes it from the MicroPython source tarball in ../shared/src (read from
there, extracted under build/rv32/src, never into the repo): `mpy-cross` and the
bare-metal QEMU port, board VIRT_RV32, configured like the C3:

- heap: the C3 board file's `heap_budget` (boards/esp32-c3-devkitm.json, 80 KiB);
- native (viper) emitter for RV32IMC without the Zba/Zcmp extensions, which the
  C3 lacks (MicroPython's esp32 port turns them off for it too);
- littlefs (MICROPY_VFS_LFS2=1) on a RAM block device as the board's flash,
  mounted at / by the frozen module `ewflash` (below): the firmware opens its
  files as on a board, and no host code (mpremote mount) runs on the target.
  The block device is C (`ramflash`, with esp32.Partition's interface), so the
  flash costs what littlefs costs behind the C3's own C flash driver;
- `time.ticks_cpu()` returns the RISC-V `instret` counter. Under
  `qemu -icount shift=0` QEMU derives it from its instruction counter, so it is
  the exact number of guest instructions executed: deterministic, the same on
  any host (`time.ticks_us()` counts the same clock in 1,000s). It wraps at
  2**30 (MicroPython's ticks period): use `time.ticks_diff`, spans < 5e8.

The result is cached under build/rv32/ (key: tarball hash + options + patches),
rebuilt only when one of them changes; concurrent callers wait on a file lock.

`Board` starts QEMU with its serial console on a pty and runs code through
mpremote's raw REPL (raw-paste mode). Packages (Debian): gcc-riscv64-unknown-elf,
picolibc-riscv64-unknown-elf, qemu-system-misc (Makefile APT_PKGS).

    b = Board.start()               # builds first if needed
    b.put_firmware(["engine", "kernels", "ewkern", "blob", "plan", "plan_window"])   # .mpy (-march=rv32imc) to flash
    print(b.run("import engine; print(engine)"))
    b.close()
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgewatch.board.catalog import load_board
from edgewatch.core import firmware as _fw
from edgewatch.core import mpy

ROOT = _fw.ROOT
FIRMWARE = _fw.locate("firmware")
SHARED_SRC = ROOT.parent / "shared" / "src"
BUILD = ROOT / "build" / "rv32"
BOARD_FILE = "esp32-c3-devkitm"
CLOCK_HZ = 160_000_000  # the ESP32-C3's CPU clock: implied time at one instruction per cycle
FLASH_ADDR = 0x80610000  # the port's ROMFS region (4 MiB of QEMU RAM, outside heap and stack)
FLASH_BLOCK = 4096  # the ESP32's flash sector
FLASH_BLOCKS = 256  # 1 MiB of littlefs
SENSOR_ADDR = FLASH_ADDR + FLASH_BLOCK * FLASH_BLOCKS  # replayed sensor data (APP_SETUP)
QEMU_CPU = "rv32,zba=off,zbb=off,zbc=off,zbs=off,f=off,d=off"
APT_PKGS = ("gcc-riscv64-unknown-elf", "picolibc-riscv64-unknown-elf", "qemu-system-misc")

# Frozen into the image (lives in ROM, not on the heap): the flash of the board.
FLASH_MODULE = '''\
# littlefs on the RAM block device (ramflash, C): the QEMU board's flash (edgewatch.board.rv32)
import vfs


def mount(fresh=True):
    import ramflash
    bd = ramflash.RAMFlash()
    if fresh:
        vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/")
    import os
    os.chdir("/")
'''

# The QEMU board has no network: modules the firmware imports (link.py, umqtt) but the
# per-sample path never calls, as files on the flash
STANDINS = {"socket.py": "# the QEMU board has no network (edgewatch.board.rv32)\n",
            "usocket.py": "from socket import *  # noqa\n"}

# The firmware modules of the per-sample path (app.py and what it imports), deployed as .mpy
# ("ewkern": the kernels in C, a native .mpy built by build_natmod below; the engine
# prefers it to the viper `kernels`, which stay deployed as a board without it runs them)
APP_MODULES = ["blob", "plan", "plan_window", "kernels", "ewkern", "engine", "detk", "detset", "seedband", "residual", "detector", "shift", "moverule", "outbox",
               "outbox_boot", "outbox_v1", "otaboot", "schema", "sensors",
               "config", "link", "app"]

# Modules in C (firmware/native/), deployed as the native .mpy build_natmod builds
NATIVE = ("ewkern",)

# The firmware's per-sample path on a board without pins or network: the real app.App,
# whose sample() (read, detector step with inference and every rule, telemetry and alert
# messages, outbox records on the flash) runs unchanged; only __init__'s hardware wiring
# is replaced: the sensor replays float32 (temperature, humidity) pairs from samples.bin
# (kept in RAM: a read costs what a driver returning two floats costs), the link is absent.
# Deployed as rv32app.mpy (`from rv32app import *`); runs on the unix port too.
APP_SETUP = f"SENSOR_ADDR = {SENSOR_ADDR:#x}\n" + """
import gc
import sys
gc.collect()
if sys.maxsize < 1 << 32:  # as main.py: the sampling loop's frames' hole (app.py, _FRAMES)
    frames = bytearray(1024)
import app  # first, as main.py does: the app and the engine while the heap is in one piece
if sys.maxsize < 1 << 32:
    app._FRAMES = frames
    del frames
import config
DET = dict(config.DEFAULTS['detector'])
FALLBACK = dict(config.FALLBACK)
ECHO = config.DEFAULTS.get('log', 'sample') != 'quiet'  # the default console line per sample
del sys.modules['config']  # main.py drops the checker once the config is read
config = None
import detector, outbox, sensors
from array import array


class Replay:
    # the sensor: replays samples.bin (float32 pairs) as a driver hands back two floats. On
    # the QEMU board from RAM outside the heap (SENSOR_ADDR; the file is copied there once,
    # in small pieces), elsewhere (the unix port) from an array
    def __init__(self, path):
        import os
        n = os.stat(path)[6] // 4
        if sys.platform != 'qemu':
            self.d = array('f', bytes(4 * n))
            with open(path, 'rb') as f:
                f.readinto(self.d)
        else:
            import uctypes
            raw = uctypes.bytearray_at(SENSOR_ADDR, 4 * n)
            buf = bytearray(256)
            mv = memoryview(buf)
            with open(path, 'rb') as f:
                at = 0
                while at < 4 * n:
                    k = f.readinto(buf)
                    raw[at:at + k] = mv[:k]
                    at += k
            t = {'v': (uctypes.ARRAY | 0, uctypes.FLOAT32 | n)}
            self.d = uctypes.struct(SENSOR_ADDR, t).v
        self.n = n
        self.i = 0

    def measure(self, out):
        i = self.i
        out[0] = self.d[i]
        out[1] = self.d[i + 1]
        i += 2
        self.i = i if i < self.n else 0


def make_app(slots=8, slot_size=512, model='model.ewb', log=None):
    gc.collect()
    a = object.__new__(app.App)
    a.reader = sensors.Reader(Replay('samples.bin'), 'dht22', 0, 0)
    a.cfg = {'model_file': model, 'ota_key': None}
    a.log = log or (lambda s: None)
    a.device = 'rv32'
    a.names = list(sensors.NAMES)
    # App.__init__'s set-up, in its order (App.setup)
    a.setup(sensors.RANGES['dht22'], DET, FALLBACK, 'outbox.bin', slots, slot_size)
    if a.pending:  # a received model, set up: stored (App.__init__)
        __import__('otaboot').commit(a)
    a.shift_run = a.samples = a.alerts = 0
    a.echo = ECHO
    # the per-sample console line: its writes called, the bytes dropped (as the log's
    # lines; a board's UART driver is not counted either), or through `log` as text
    app._write = None if log else (lambda b: None)
    gc.collect()
    return a
"""

# Compiled as MicroPython's esp32 port compiles the C3's image: -O2 (its
# boards/sdkconfig.base sets CONFIG_COMPILER_OPTIMIZATION_PERF, "use -O2 ... to improve
# performance") and the bytecode VM's computed goto (its mpconfigport.h); the QEMU port's
# own defaults are -Os and no computed goto, which would count more instructions per
# bytecode than the board runs
COPT = "-O2 -DNDEBUG"

# Source patches of the extracted tree (test runtime only): (file, old, new)
PATCHES = (
    ("ports/qemu/mpconfigport.h", "#define MICROPY_CONFIG_ROM_LEVEL    (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)",
     "#define MICROPY_CONFIG_ROM_LEVEL    (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)\n"
     "#define MICROPY_OPT_COMPUTED_GOTO   (1)"),
    # time.time() and time.gmtime(), as the C3's build has them (the firmware's clock); this
    # board has no clock: it reads 0 ("not set", the firmware then leaves stamping to the host)
    ("ports/qemu/mpconfigport.h", '#define MICROPY_PY_MACHINE_INCLUDEFILE "ports/qemu/modmachine.c"',
     '#define MICROPY_PY_MACHINE_INCLUDEFILE "ports/qemu/modmachine.c"\n'
     "#define MICROPY_PY_TIME_GMTIME_LOCALTIME_MKTIME (1)\n"
     "#define MICROPY_PY_TIME_TIME_TIME_NS (1)\n"
     '#define MICROPY_PY_TIME_INCLUDEFILE "ports/qemu/modtime_rv32.c"'),
    ("ports/qemu/Makefile", "\tshared/runtime/sys_stdio_mphal.c \\\n",
     "\tshared/runtime/sys_stdio_mphal.c \\\n\tshared/timeutils/timeutils.c \\\n"
     "\tramflash.c \\\n"),
    ("ports/qemu/mpconfigport.h", "#define MICROPY_EMIT_RV32_ZBA       (1)",
     "#define MICROPY_EMIT_RV32_ZBA       (0)"),
    ("ports/qemu/mpconfigport.h", "#define MICROPY_EMIT_RV32_ZCMP      (1)",
     "#define MICROPY_EMIT_RV32_ZCMP      (0)"),
    ("ports/qemu/mphalport.c", "mp_uint_t mp_hal_ticks_cpu(void) {\n    return 0;\n}",
     "mp_uint_t mp_hal_ticks_cpu(void) {\n    mp_uint_t n;\n"
     "    __asm volatile (\"rdinstret %0\" : \"=r\" (n));\n    return n;\n}\n"
     # littlefs stamps files with the time: this board has no clock, so a fixed 0
     "uint64_t mp_hal_time_ns(void) {\n    return 0;\n}"),
)


# New files of the extracted tree (test runtime only)
NEW_FILES = {
    # the flash: a RAM block device in C with esp32.Partition's interface (readblocks,
    # writeblocks with offsets, ioctl), so littlefs costs what it costs behind the C3's
    # flash driver, not a Python method per 32-byte read
    "ports/qemu/ramflash.c": f"""\
// RAM block device for littlefs, the QEMU board's flash (edgewatch.board.rv32)
#include <string.h>
#include "py/runtime.h"
#include "py/mperrno.h"

#define RF_ADDR ({FLASH_ADDR:#x})
#define RF_BLOCK ({FLASH_BLOCK})
#define RF_COUNT ({FLASH_BLOCKS})

typedef struct {{ mp_obj_base_t base; }} ramflash_obj_t;
static const mp_obj_type_t ramflash_type;
static const ramflash_obj_t ramflash_obj = {{{{&ramflash_type}}}};

static mp_obj_t ramflash_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {{
    return MP_OBJ_FROM_PTR(&ramflash_obj);
}}

static uint8_t *rf_at(size_t n_args, const mp_obj_t *args, mp_buffer_info_t *b, int flags) {{
    mp_get_buffer_raise(args[2], b, flags);
    mp_int_t off = mp_obj_get_int(args[1]) * RF_BLOCK + (n_args == 4 ? mp_obj_get_int(args[3]) : 0);
    if (off < 0 || off + (mp_int_t)b->len > RF_BLOCK * RF_COUNT) {{
        mp_raise_OSError(MP_EIO);
    }}
    return (uint8_t *)RF_ADDR + off;
}}

static mp_obj_t ramflash_readblocks(size_t n_args, const mp_obj_t *args) {{
    mp_buffer_info_t b;
    uint8_t *p = rf_at(n_args, args, &b, MP_BUFFER_WRITE);
    memcpy(b.buf, p, b.len);
    return mp_const_none;
}}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(ramflash_readblocks_obj, 3, 4, ramflash_readblocks);

static mp_obj_t ramflash_writeblocks(size_t n_args, const mp_obj_t *args) {{
    mp_buffer_info_t b;
    uint8_t *p = rf_at(n_args, args, &b, MP_BUFFER_READ);
    memcpy(p, b.buf, b.len);
    return mp_const_none;
}}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(ramflash_writeblocks_obj, 3, 4, ramflash_writeblocks);

static mp_obj_t ramflash_ioctl(mp_obj_t self, mp_obj_t op, mp_obj_t arg) {{
    switch (mp_obj_get_int(op)) {{
        case 4: return MP_OBJ_NEW_SMALL_INT(RF_COUNT);
        case 5: return MP_OBJ_NEW_SMALL_INT(RF_BLOCK);
        default: return MP_OBJ_NEW_SMALL_INT(0);
    }}
}}
static MP_DEFINE_CONST_FUN_OBJ_3(ramflash_ioctl_obj, ramflash_ioctl);

static const mp_rom_map_elem_t ramflash_locals_table[] = {{
    {{ MP_ROM_QSTR(MP_QSTR_readblocks), MP_ROM_PTR(&ramflash_readblocks_obj) }},
    {{ MP_ROM_QSTR(MP_QSTR_writeblocks), MP_ROM_PTR(&ramflash_writeblocks_obj) }},
    {{ MP_ROM_QSTR(MP_QSTR_ioctl), MP_ROM_PTR(&ramflash_ioctl_obj) }},
}};
static MP_DEFINE_CONST_DICT(ramflash_locals_dict, ramflash_locals_table);

static MP_DEFINE_CONST_OBJ_TYPE(ramflash_type, MP_QSTR_RAMFlash, MP_TYPE_FLAG_NONE,
    make_new, ramflash_make_new, locals_dict, &ramflash_locals_dict);

static const mp_rom_map_elem_t ramflash_module_table[] = {{
    {{ MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_ramflash) }},
    {{ MP_ROM_QSTR(MP_QSTR_RAMFlash), MP_ROM_PTR(&ramflash_type) }},
}};
static MP_DEFINE_CONST_DICT(ramflash_module_globals, ramflash_module_table);

const mp_obj_module_t ramflash_module = {{
    .base = {{ &mp_type_module }},
    .globals = (mp_obj_dict_t *)&ramflash_module_globals,
}};
MP_REGISTER_MODULE(MP_QSTR_ramflash, ramflash_module);
""",
    "ports/qemu/modtime_rv32.c": (
        "// time for the QEMU board (edgewatch.board.rv32): no clock, it reads 0\n"
        '#include "shared/timeutils/timeutils.h"\n'
        "static void mp_time_localtime_get(timeutils_struct_time_t *tm) {\n"
        "    timeutils_seconds_since_epoch_to_struct_time(0, tm);\n}\n"
        "static mp_obj_t mp_time_time_get(void) {\n    return mp_obj_new_int(0);\n}\n"),
}


class BuildError(RuntimeError):
    """The RV32 runtime could not be built (missing packages, compiler error)."""


@dataclass(frozen=True)
class Runtime:
    firmware: Path  # firmware.elf for qemu-system-riscv32
    mpy_cross: Path
    heap: int
    version: str  # MicroPython version string of this build

    def compile(self, src: Path, dest: Path, name: str | None = None) -> Path:
        """`mpy-cross -march=rv32imc` (no Zba/Zcmp, as for the C3), cached while the source
        keeps the modification time the object was built from (see mpy.is_fresh). The
        source name embedded is ``name`` (default the file's own), as `make deploy` embeds
        it: not the checkout's absolute path, whose length would move every heap figure
        (each module's name is a string on the board's heap: a fresh clone in /tmp left
        272 B less free than /work/main)."""
        if mpy.is_fresh(src, dest):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([str(self.mpy_cross), "-march=rv32imc", "-s", name or src.name, "-o",
                        str(tmp), str(src)], check=True, capture_output=True)
        mpy.stamp(src, tmp)
        os.replace(tmp, dest)
        return dest


def tarball() -> Path:
    found = sorted(SHARED_SRC.glob("micropython-*.tar.gz"))
    if len(found) != 1:
        raise BuildError(f"expected one micropython-*.tar.gz in {SHARED_SRC}, found {len(found)}")
    return found[0]


def heap_budget() -> int:
    return int(load_board(BOARD_FILE)["heap_budget"])


def _key(tar: Path, heap: int) -> str:
    h = hashlib.sha256()
    with open(tar, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps([heap, PATCHES, NEW_FILES, FLASH_MODULE, QEMU_CPU, COPT]).encode())
    return h.hexdigest()[:16]


def _libgcc() -> str:
    # Bookworm's multilib lookup for rv32imac_zicsr returns the 64-bit libgcc: ask for rv32imac
    return subprocess.run(["riscv64-unknown-elf-gcc", "-march=rv32imac", "-mabi=ilp32",
                           "-print-libgcc-file-name"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _make(args: list[str], cwd: Path, log) -> None:
    # the tree sits inside this project's git checkout: keep git from stamping our commit
    # into the firmware's version (py/makeversionhdr.py falls back to mpconfig.h)
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(cwd.parent))
    proc = subprocess.run(["make", "-j2", *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                          env=env)
    if proc.returncode:
        raise BuildError(f"make {' '.join(args)} failed in {cwd}: see {log.name}")


def build(force: bool = False) -> Runtime:
    """The built runtime, building it first when missing or out of date (~1 min on 2 cores)."""
    missing = [t for t in ("riscv64-unknown-elf-gcc", "qemu-system-riscv32", "make")
               if not shutil.which(t)]
    if missing:
        raise BuildError(f"missing {', '.join(missing)}: install the Debian packages "
                         f"{' '.join(APT_PKGS)} (make setup does)")
    tar = tarball()
    heap = heap_budget()
    key = _key(tar, heap)
    src = BUILD / "src"
    stamp = BUILD / "stamp.json"
    elf = src / "ports" / "qemu" / "build-VIRT_RV32" / "firmware.elf"
    cross = src / "mpy-cross" / "build" / "mpy-cross"
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = json.loads(stamp.read_text()) if stamp.exists() else {}
        if force or info.get("key") != key or not elf.exists() or not cross.exists():
            t0 = time.monotonic()
            stamp.unlink(missing_ok=True)
            shutil.rmtree(src, ignore_errors=True)
            tmp = BUILD / "extract.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(tar) as tf:
                tf.extractall(tmp, filter="data")
            (top,) = list(tmp.iterdir())
            top.rename(src)
            tmp.rmdir()
            for rel, old, new in PATCHES:
                p = src / rel
                text = p.read_text()
                if old not in text:
                    raise BuildError(f"{rel}: the source changed, cannot apply {new!r}")
                p.write_text(text.replace(old, new))
            for rel, text in NEW_FILES.items():
                (src / rel).write_text(text)
            frozen = BUILD / "frozen"
            frozen.mkdir(exist_ok=True)
            (frozen / "ewflash.py").write_text(FLASH_MODULE)
            (frozen / "manifest.py").write_text(f"freeze({str(frozen)!r}, 'ewflash.py')\n")
            # micropython-lib is not in the tarball and the manifest needs none of it; the
            # build only checks that its folder has a README.md
            nolib = BUILD / "no-micropython-lib"
            nolib.mkdir(exist_ok=True)
            (nolib / "README.md").write_text("micropython-lib is not used by this build\n")
            with open(BUILD / "build.log", "w") as log:
                _make(["-C", "mpy-cross"], src, log)
                _make(["-C", "ports/qemu", "BOARD=VIRT_RV32", f"MICROPY_HEAP_SIZE={heap}",
                       "MICROPY_VFS_LFS2=1", f"FROZEN_MANIFEST={frozen / 'manifest.py'}",
                       "MPY_CROSS_FLAGS=-march=rv32imc", f"MPY_LIB_DIR={nolib}", f"LIBS={_libgcc()}",
                       f"COPT={COPT}"], src, log)
            version = _version(src, tar)
            stamp.write_text(json.dumps({"key": key, "heap": heap, "version": version,
                                         "build_seconds": round(time.monotonic() - t0, 1)}))
            info = json.loads(stamp.read_text())
    return Runtime(elf, cross, heap, info["version"])


def _version(src: Path, tar: Path) -> str:
    hdr = (src / "py" / "mpconfig.h").read_text()
    v = {k: int(re.search(rf"#define MICROPY_VERSION_{k} (\d+)", hdr).group(1))
         for k in ("MAJOR", "MINOR", "MICRO", "PRERELEASE")}
    commit = tar.name.removeprefix("micropython-").removesuffix(".tar.gz")
    return (f"{v['MAJOR']}.{v['MINOR']}.{v['MICRO']}{'-preview' if v['PRERELEASE'] else ''}"
            f" (source {commit})")


def build_info() -> dict:
    """What the cached build recorded: key, heap, version, build_seconds."""
    stamp = BUILD / "stamp.json"
    return json.loads(stamp.read_text()) if stamp.exists() else {}


class BoardError(RuntimeError):
    """Code on the RV32 board raised; the message carries its traceback."""


class Board:
    """One QEMU RV32 board: serial console on a pty, raw REPL through mpremote."""

    def __init__(self, runtime: Runtime, proc: subprocess.Popen, pty: str):
        from mpremote.transport_serial import SerialTransport

        self.runtime = runtime
        self.proc = proc
        self.pty = pty
        self.t = SerialTransport(pty, baudrate=115200, exclusive=False)
        self.t.enter_raw_repl(soft_reset=False)

    @classmethod
    def start(cls, runtime: Runtime | None = None, mount: bool = True) -> Board:
        rt = runtime or build()
        argv = ["qemu-system-riscv32", "-machine", "virt", "-bios", "none", "-cpu", QEMU_CPU,
                "-icount", "shift=0", "-semihosting", "-nographic", "-monitor", "null",
                "-serial", "pty", "-kernel", str(rt.firmware)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        pty, seen, end = None, b"", time.monotonic() + 20
        while pty is None and time.monotonic() < end:
            r, _, _ = select.select([proc.stdout], [], [], 0.5)
            if r:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                m = re.search(rb"(/dev/pts/\d+)", seen)
                if m:
                    pty = m.group(1).decode()
        if pty is None:
            proc.kill()
            proc.wait()
            raise BoardError(f"qemu gave no pty: {seen.decode(errors='replace')[-500:]}")
        board = cls(rt, proc, pty)
        if mount:
            board.run("import ewflash\newflash.mount()\ndel ewflash")
        return board

    def reset(self) -> None:
        """Soft reset (a fresh heap and VM, as after boot); the flash keeps its files."""
        self.t.exit_raw_repl()
        self.t.enter_raw_repl(soft_reset=True)
        self.run("import ewflash\newflash.mount(False)\ndel ewflash")

    def run(self, code: str, timeout: float = 300) -> str:
        """Execute `code` on the board; its printed output, or BoardError with its traceback."""
        out, err = self.t.exec_raw(code, timeout=timeout)
        if err:
            raise BoardError(err.decode(errors="replace"))
        return out.decode(errors="replace").replace("\r\n", "\n")

    def put(self, data: bytes, dest: str) -> None:
        """Write a file onto the board's littlefs flash."""
        self.t.fs_writefile(dest, data, chunk_size=1024)

    def put_firmware(self, names, dest: str = "") -> None:
        """Copy firmware modules as .mpy compiled for RV32 (as `make deploy` copies .mpy)."""
        for name in names:
            if name in NATIVE:  # a dynamic native module (C), built for rv32imc
                self.put(build_natmod(runtime=self.runtime).read_bytes(), f"{dest}{name}.mpy")
                continue
            if name.endswith(".py"):  # a source file as such (kernels.py for kernels_plain)
                self.put((FIRMWARE / name).read_bytes(), dest + name)
                continue
            mpy = self.runtime.compile(FIRMWARE / f"{name}.py", BUILD / "mpy-s" / f"{name}.mpy")
            self.put(mpy.read_bytes(), f"{dest}{name}.mpy")

    def put_app(self, model: bytes | None, samples: bytes) -> None:
        """Deploy the per-sample path: APP_MODULES as .mpy, umqtt, stand-ins, model, samples."""
        for name, text in STANDINS.items():
            self.put(text.encode(), name)
        self.run("import os\ntry:\n    os.mkdir('umqtt')\nexcept OSError:\n    pass")
        umqtt = ROOT / "build" / "mplib" / "umqtt" / "simple.py"
        if not umqtt.exists():  # `make setup` normally fetched it
            from edgewatch.board.fetch_mplib import fetch

            fetch(str(umqtt.parent.parent))
        self.put(self.runtime.compile(umqtt, BUILD / "mpy-s" / "umqtt" / "simple.mpy",
                                      "umqtt/simple.py").read_bytes(),
                 "umqtt/simple.mpy")
        self.put_firmware(APP_MODULES)
        # the harness as .mpy too: code compiled on the board would fragment the heap first
        src = BUILD / "mpy" / "rv32app.py"
        if not src.exists() or src.read_text() != APP_SETUP:
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_text(APP_SETUP)
        self.put(self.runtime.compile(src, BUILD / "mpy-s" / "rv32app.mpy").read_bytes(),
                 "rv32app.mpy")
        if model is not None:
            self.put(model, "model.ewb")
        self.put(samples, "samples.bin")

    def instructions(self, code: str, setup: str = "", repeat: int = 1) -> int:
        """Guest instructions of `code` (its own overhead subtracted), per run, over `repeat` runs."""
        body = "\n".join("    " + line for line in code.strip().splitlines())
        prog = (f"{setup}\nimport time\ndef _f():\n{body}\n"
                f"def _e():\n    pass\n"
                f"_t = time.ticks_cpu\n_d = time.ticks_diff\n"
                f"_a = _t()\nfor _i in range({repeat}):\n    _f()\n_b = _t()\n"
                f"for _i in range({repeat}):\n    _e()\n_c = _t()\n"
                f"print((_d(_b, _a) - _d(_c, _b)) // {repeat})\n")
        return int(self.run(prog).split()[-1])

    def close(self) -> None:
        try:
            self.t.close()
        except Exception:  # noqa: S110 - the pty is gone with qemu anyway
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- the engine's kernels in C (firmware/native/ewkern.c) as a dynamic native module ----
# build_natmod() compiles ewkern.c into ewkern.mpy for ARCH=rv32imc (the ESP32-C3's ISA)
# with the MicroPython source's own natmod tooling (py/dynruntime.mk, tools/mpy_ld.py,
# which needs pyelftools), from the source tree build() extracts. Cached under
# build/rv32/natmod/, keyed by the C source, the runtime's key and the options, rebuilt only
# when one changes (a few seconds); concurrent callers wait on a file lock.
# firmware/engine.py imports `ewkern` when the board has it and falls back to the viper
# kernels (firmware/kernels.py): edgewatch.board.deploy ships it only to rv32imc boards.
# build_natmod(broken=True): tests only, issue 17's broken multiply.

NATMOD_NAME = "ewkern"
NATMOD_ARCH = "rv32imc"
NATMOD_MPY_VERSION = (6, 3)  # .mpy version and sub-version of the source's natmods (checked by build_natmod())
NATMOD_SOURCE = FIRMWARE / "native" / f"{NATMOD_NAME}.c"
NATMOD_BUILD = BUILD / "natmod"
# -O2: the MAC loops and the requantisation inlined (the code is still ~1.5 KB);
# no loop-to-memcpy rewriting beyond what mpy_ld resolves
NATMOD_CFLAGS = "-O2 -fno-tree-loop-distribute-patterns"

NATMOD_MAKEFILE = """\
# generated by edgewatch.board.rv32 (build_natmod)
MPY_DIR = {mpy_dir}
MOD = {name}
SRC = {name}.c
ARCH = {arch}
include $(MPY_DIR)/py/dynruntime.mk
"""


def mpy_header(path: Path) -> tuple[int, int, int]:
    """(.mpy version, sub-version, native arch index) of an .mpy file's header."""
    head = path.read_bytes()[:3]
    return head[1], head[2] & 3, head[2] >> 2


def build_natmod(broken: bool = False, runtime: Runtime | None = None) -> Path:
    """ewkern.mpy for rv32imc, building it first when missing or out of date.

    `broken`: a variant whose requantisation multiplies on 32-bit words (EWKERN_BROKEN),
    for the test that shows the bit-exactness checks catch a broken kernel."""
    runtime = runtime or build()  # the extracted MicroPython source and its key
    src_tree = runtime.firmware.parents[3]
    cflags = NATMOD_CFLAGS + (" -DEWKERN_BROKEN" if broken else "")
    h = hashlib.sha256(NATMOD_SOURCE.read_bytes())
    h.update(repr((build_info().get("key"), NATMOD_ARCH, cflags, NATMOD_MAKEFILE)).encode())
    key = h.hexdigest()[:16]
    out = NATMOD_BUILD / key
    made = out / f"{NATMOD_NAME}.mpy"
    if made.exists():
        return made
    NATMOD_BUILD.mkdir(parents=True, exist_ok=True)
    with open(NATMOD_BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if made.exists():
            return made
        tmp = NATMOD_BUILD / f"{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy(NATMOD_SOURCE, tmp / f"{NATMOD_NAME}.c")
        (tmp / "Makefile").write_text(NATMOD_MAKEFILE.format(mpy_dir=src_tree, name=NATMOD_NAME, arch=NATMOD_ARCH))
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(src_tree.parent))
        proc = subprocess.run(["make", f"PYTHON={sys.executable}", f"CFLAGS_EXTRA={cflags}"],
                              cwd=tmp, capture_output=True, text=True, env=env)
        if proc.returncode or not (tmp / f"{NATMOD_NAME}.mpy").exists():
            raise BuildError(f"building {NATMOD_NAME}.mpy failed:\n{proc.stdout[-2000:]}"
                                  f"{proc.stderr[-3000:]}")
        for f in tmp.iterdir():  # keep only the module
            if f.name != f"{NATMOD_NAME}.mpy":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        got = mpy_header(tmp / f"{NATMOD_NAME}.mpy")
        if got[:2] != NATMOD_MPY_VERSION:  # deploy matches boards against NATMOD_MPY_VERSION
            raise BuildError(f"{NATMOD_NAME}.mpy is .mpy {got[0]}.{got[1]}, expected "
                                  f"{NATMOD_MPY_VERSION[0]}.{NATMOD_MPY_VERSION[1]}: update natmod.NATMOD_MPY_VERSION")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return made
