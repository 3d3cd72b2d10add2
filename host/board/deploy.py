"""Copy the firmware, the model blob and the board's config to a board, install umqtt, reset it.

    edgewatch deploy --port /dev/ttyUSB0 --board esp32-devkitc-dht22 [--model models/default]

Steps, in order, so that nothing is written to the board before every input is known good:

1. check the inputs: the port exists, the board file is valid (host/board/catalog.py), the model
   blob exists, the config builds (secrets from the environment or `.env`, never printed);
2. ask the board which MicroPython it runs (``sys.implementation._mpy``: the .mpy version and
   the native architecture), over the same tool that copies;
3. stage the files in a private temporary folder: firmware/*.py precompiled with mpy-cross for
   that architecture (``main.py`` and ``boot.py`` stay source: the board runs them by name),
   the model blob, ``config.json``, and umqtt from ``--umqtt-from DIR`` when given; for an
   rv32imc board (the ESP32-C3) also the engine's kernels in C, ``ewkern.mpy``
   (edgewatch.board.rv32.build_natmod; other boards run the viper kernels);
4. copy them with mpremote (``AMPY=1``/``--ampy``: adafruit-ampy), remove stale ``.py`` twins of
   the copied ``.mpy`` (a .py would shadow the new .mpy), install umqtt with
   ``mpremote mip install umqtt.simple`` unless ``--umqtt-from`` was given, and reset the board.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from edgewatch.core import firmware as firmware_files
from edgewatch.core import mpy
from edgewatch.core.errors import UserError
from edgewatch.core.mpy import bin_path

ROOT = firmware_files.ROOT
FIRMWARE = firmware_files.locate("firmware")
DEFAULT_BOARD = "esp32-devkitc-dht22"
DEFAULT_MODEL = "models/default"
CONFIG_NAME = "config.json"
MODEL_NAME = "model.ewb"
OTA_LEFTOVERS = ["model.new", "model.err"]  # firmware/otaboot.py's files beside MODEL_NAME
KEEP_SOURCE = {"main.py", "boot.py"}  # run by name at boot: must stay .py
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# sys.implementation._mpy >> 10 → mpy-cross -march (py/persistentcode.h order)
MPY_ARCHS = ["", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
             "xtensa", "xtensawin", "rv32imc", "rv64imc"]
# .env keys that go into the board's config.json (values never printed); first name set wins
SECRET_KEYS = {
    "wifi_ssid": ("WIFI_SSID",),
    "wifi_password": ("WIFI_PASSWORD",),
    "broker": ("MQTT_URL", "EDGEWATCH_MQTT_URL"),
    "user": ("MQTT_USER",),
    "password": ("MQTT_PASSWORD",),
    "ota_key": ("OTA_KEY", "EDGEWATCH_OTA_KEY", "EDGEWATCH_MODEL_KEY"),
    "ca": ("MQTT_CA_FILE",),
    "device": ("DEVICE_ID",),
    "ota_key_version": ("EDGEWATCH_OTA_KEY_VERSION",),
}
# config.json keys -> the .env names they come from, so a mistake names what the user wrote
ENV_NAMES = {"broker": "MQTT_URL", "device": "DEVICE_ID", "ota_key": "OTA_KEY",
             "ota_key_version": "EDGEWATCH_OTA_KEY_VERSION", "user": "MQTT_USER",
             "password": "MQTT_PASSWORD", "wifi": "WIFI_SSID", "ca": "MQTT_CA_FILE"}
BOARD_FILE = "board.json"
CA_NAME = "ca.pem"


def check_port(port: str | None, what: str = "deploy") -> str:
    """The serial port must be given and exist: a one-line error otherwise, before any write."""
    if not port:
        raise UserError(f"no serial port given: make {what} PORT=/dev/ttyUSB0 "
                        "(list ports with `ls /dev/ttyUSB* /dev/ttyACM*`)")
    if "://" not in port and not os.path.exists(port):
        raise UserError(f"serial port {port} does not exist: is the board plugged in? "
                        "(list ports with `ls /dev/ttyUSB* /dev/ttyACM*`)")
    if "://" not in port and not os.access(port, os.R_OK | os.W_OK):
        raise UserError(f"no permission to open {port}: add yourself to the dialout group "
                        "(sudo usermod -aG dialout $USER, then log in again)")
    if "://" not in port:
        _check_serial(port)
    return port


def _check_serial(port: str) -> None:
    """`port` must be a terminal device (a USB-serial adapter, a pty): /dev/null, a file or a
    folder would otherwise reach mpremote/esptool and fail there with exit 1 or a screenful.
    Opening it sends nothing (O_NONBLOCK: no wait for carrier; O_NOCTTY: it does not become
    our terminal), and it is closed at once."""
    mode = os.stat(port).st_mode
    if not stat.S_ISCHR(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else \
            "not a device"
        raise UserError(f"{port} is not a serial port ({kind}): pass the board's port, e.g. "
                        "/dev/ttyUSB0 (list ports with `ls /dev/ttyUSB* /dev/ttyACM*`)")
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(f"cannot open serial port {port}: {exc.strerror or exc}") from None
    try:
        tty = os.isatty(fd)
    finally:
        os.close(fd)
    if not tty:
        raise UserError(f"{port} is not a serial port (a device that is not a terminal): pass "
                        "the board's port, e.g. /dev/ttyUSB0 (list ports with "
                        "`ls /dev/ttyUSB* /dev/ttyACM*`)")


def board_config(name: str) -> dict:
    """boards/<name> validated by edgewatch.board.catalog; its errors become one line."""
    from edgewatch.board.catalog import load_board

    try:
        return load_board(name)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"board {name!r}: {exc}") from None


def model_blob(model: str | None) -> Path | None:
    """The model blob to deploy: a .ewb file, or <dir>/model.ewb; None to run on rules alone."""
    if not model:
        return None
    p = Path(model)
    blob = p if p.suffix == ".ewb" else p / MODEL_NAME
    if not blob.is_file():
        raise UserError(f"{blob}: no model blob: run `make train convert` (or `make demo`), "
                        "or pass --no-model to run on rules alone")
    check_blob(blob)
    return blob


def check_blob(blob: Path) -> None:
    """Parse `blob` with the board's own parser (magic, version, length, CRC, sections): a
    damaged or foreign file is one line now, not a board that boots on rules alone."""
    from edgewatch.training.export import blob as blobfmt

    try:
        blobfmt.read(Path(blob).read_bytes())
    except OSError as exc:
        raise UserError(f"{blob}: cannot read ({exc.strerror or exc})") from None
    except blobfmt.BlobError as exc:
        raise UserError(f"{blob}: not a valid model blob ({exc}): run `make train convert` "
                        "again") from None


def read_secrets(env_file: str | None) -> dict:
    """Board secrets from the environment, then `.env` (the environment wins)."""
    from dotenv import dotenv_values

    values: dict[str, str] = {}
    if env_file:
        path = Path(env_file)
        if path.is_file():
            values = {k: v for k, v in dotenv_values(path).items() if v is not None}
        elif env_file != ".env":
            raise UserError(f"{env_file}: no such env file")
    out = {}
    for key, names in SECRET_KEYS.items():
        for n in names:
            v = os.environ.get(n) or values.get(n)
            if v:
                out[key] = v
                break
    return out


def build_config(board_name: str, board: dict, secrets: dict, device_id: str | None,
                 extra: dict | None = None) -> dict:
    """The board's config.json (firmware/config.py's schema) from `.env` secrets and options."""
    device = device_id or secrets.get("device") or "gh-01"
    if not DEVICE_ID_RE.match(device):
        raise UserError(f"device id {device!r}: use 1-32 characters of A-Z a-z 0-9 _ -")
    if device.startswith("ew-"):  # deploy/mosquitto/edgewatch.conf clientid_prefixes
        raise UserError(f"device id {device!r}: ids starting with 'ew-' are the services' "
                        "MQTT client ids on the production broker; choose another")
    if not secrets.get("broker"):
        raise UserError("MQTT_URL is not set: put MQTT_URL=mqtt://host:1883 in .env "
                        "(see .env.example)")
    broker = str(secrets["broker"])
    if broker.startswith(("mqtt://", "mqtts://")) and "@" in broker.split("://", 1)[1].split("/", 1)[0]:
        # the board reads host[:port] from the URL: user:password@ became part of the host
        # name it looked up, and it never connected (the value is not echoed: a password)
        raise UserError("MQTT_URL: a user or password in the URL is not read by the board: put "
                        "them in MQTT_USER and MQTT_PASSWORD, and the URL as mqtt://host:port")
    cfg = {"device": device, "board": board_name, "broker": broker}
    if secrets.get("wifi_ssid"):
        cfg["wifi"] = {"ssid": secrets["wifi_ssid"], "password": secrets.get("wifi_password", "")}
    if secrets.get("user"):
        # the board's own MQTT account; a password alone (the host's) is not the board's
        cfg["user"] = secrets["user"]
        cfg["password"] = secrets.get("password", "")
    if secrets.get("ota_key"):
        # the board gets its own key, derived from the fleet master key: a blob signed for
        # it opens no other board, and a stolen board can sign nothing for another
        from edgewatch.services.ota import key_version
        from edgewatch.training.export.blob import derive_key

        try:
            master = bytes.fromhex(secrets["ota_key"].strip())
        except ValueError:
            master = b""
        if len(master) < 16:
            raise UserError("OTA_KEY: expected at least 32 hex digits (the fleet master key)")
        kv = key_version(secrets.get("ota_key_version"))
        cfg["ota_key"] = derive_key(master, device, kv).hex()
        cfg["ota_key_version"] = kv
    if secrets.get("ca"):
        if not Path(secrets["ca"]).is_file():
            raise UserError(f"MQTT_CA_FILE {secrets['ca']}: no such file")
        cfg["ca"] = CA_NAME
    cfg.update(extra or {})
    return cfg


def check_config(config: dict, board: dict) -> None:
    """Run the firmware's own config checks on the host, before anything is sent: a
    config the board would refuse is one line naming the key (its .env name when it
    comes from .env), and nothing is written."""
    fw = firmware_files.load("config")
    with tempfile.TemporaryDirectory(prefix="edgewatch-check-") as tmp:
        cfg, brd = Path(tmp) / CONFIG_NAME, Path(tmp) / BOARD_FILE
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        brd.write_text(json.dumps({"name": config["board"], **board}))
        try:
            fw.load(str(cfg), str(brd))
        except fw.ConfigError as exc:
            msg = str(exc).split(": ", 1)[-1]  # without the temporary path
            key = msg.split(":", 1)[0].split(".")[0].split(" ")[0]
            msg = _without_secrets(msg, key, config)
            name = ENV_NAMES.get(key)
            where = f"{name} (config.json {key})" if name else f"config.json {key}"
            raise UserError(f"{where}: {msg.split(': ', 1)[-1]}; nothing was written "
                            "to the board") from None


CONFIG_SECRETS = ("password", "wifi", "ota_key")  # config.json entries whose values are secrets
SECRET_WORDS = ("pass", "key", "secret", "token")


def _without_secrets(msg: str, key: str, config: dict) -> str:
    """A firmware config error fit to print: no secret value (`--set password=87654321` was
    echoed in "expected a non-empty string, got 87654321"), no password in a broker URL."""
    if key in CONFIG_SECRETS:
        msg = re.sub(r",? got .*$", "", msg)
    values = [config.get("password"), config.get("ota_key"),
              (config.get("wifi") or {}).get("password") if isinstance(config.get("wifi"), dict)
              else config.get("wifi")]
    for v in values:
        if v not in (None, "") and len(str(v)) >= 4:
            msg = msg.replace(repr(v), "***").replace(str(v), "***")
    return re.sub(r"(://[^/\s'\"@:]*:)[^@\s'\"/]*@", r"\1***@", msg)


def mpy_cross_version() -> int:
    """The .mpy format version this mpy-cross writes (6 for MicroPython ≥ 1.20)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "v.py"
        src.write_text("x = 1\n")
        mpy.cross_compile(src, src.with_suffix(".mpy"), None)
        return src.with_suffix(".mpy").read_bytes()[1]


def stage_code(out: Path, arch: str | None, compile_mpy: bool, umqtt_from: str | None) -> list[str]:
    """The firmware (precompiled unless `compile_mpy` is false) and umqtt under `out`.

    Also what `edgewatch sim` runs, so simulated boards execute the very files a board gets.
    """
    files = []
    for src in sorted(FIRMWARE.rglob("*.py")):
        rel = src.relative_to(FIRMWARE)
        if "__pycache__" in rel.parts:
            continue
        if compile_mpy and rel.name not in KEEP_SOURCE:
            dst = out / rel.with_suffix(".mpy")
            dst.parent.mkdir(parents=True, exist_ok=True)
            mpy.cross_compile(src, dst, arch, rel.as_posix())
        else:
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
        files.append(dst.relative_to(out).as_posix())
    if umqtt_from:
        src_dir = Path(umqtt_from) / "umqtt"
        if not (src_dir / "simple.py").is_file():
            raise UserError(f"--umqtt-from {umqtt_from}: no umqtt/simple.py there "
                            "(make build/mplib/.stamp fetches it)")
        for src in sorted(src_dir.glob("*.py")):
            if src.name == "__init__.py":
                continue  # on a board umqtt is a namespace package, as mip installs it
            rel = Path("lib") / "umqtt" / src.name
            dst = out / (rel.with_suffix(".mpy") if compile_mpy else rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if compile_mpy:
                mpy.cross_compile(src, dst, arch, rel.as_posix())
            else:
                shutil.copy(src, dst)
            files.append(dst.relative_to(out).as_posix())
    return files


def stage_native(out: Path, say=print) -> list[str]:
    """The engine's kernels in C (firmware/native/ewkern.c, edgewatch.board.rv32.build_natmod) as
    ``ewkern.mpy`` under `out`, for an rv32imc board (the ESP32-C3); [] when it cannot be
    built here (no RISC-V toolchain, MicroPython source or pyelftools): the board then runs
    the viper kernels, as every other board does."""
    from edgewatch.board import rv32
    from edgewatch.board.rv32 import BuildError

    try:
        mpy_file = rv32.build_natmod()
    except (BuildError, OSError, subprocess.CalledProcessError) as e:
        say(f"deploy: the C kernels ({rv32.NATMOD_NAME}.mpy) could not be built ({str(e).splitlines()[0]}); "
            "the board runs the viper kernels")
        return []
    shutil.copy(mpy_file, out / f"{rv32.NATMOD_NAME}.mpy")
    return [f"{rv32.NATMOD_NAME}.mpy"]


def native_fits(mpy_info: int) -> bool:
    """The board takes the natmod: rv32imc and the .mpy version and sub-version it was
    built with (a native .mpy must match both: py/persistentcode.c)."""
    from edgewatch.board import rv32

    arch, version = arch_of(mpy_info)
    return arch == rv32.NATMOD_ARCH and (version, (mpy_info >> 8) & 3) == rv32.NATMOD_MPY_VERSION


def stage(out: Path, arch: str | None, compile_mpy: bool, blob: Path | None, config: dict,
          board: dict, umqtt_from: str | None, ca_file: str | None = None,
          native: bool = False, say=print) -> list[str]:
    """Write every file the board gets under `out`; returns their board-relative paths.
    `native`: the C kernels too (stage_native; rv32imc boards)."""
    files = stage_code(out, arch, compile_mpy, umqtt_from)
    if native:
        files += stage_native(out, say)
    if blob:
        shutil.copy(blob, out / MODEL_NAME)
        files.append(MODEL_NAME)
    cfg = out / CONFIG_NAME
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, separators=(",", ":"))
    files.append(CONFIG_NAME)
    (out / BOARD_FILE).write_text(json.dumps({"name": config["board"], **board}, separators=(",", ":")))
    files.append(BOARD_FILE)
    if ca_file:
        shutil.copy(ca_file, out / CA_NAME)
        files.append(CA_NAME)
    return files


def arch_of(mpy_info: int) -> tuple[str, int]:
    """(mpy-cross -march name, .mpy version) from a board's sys.implementation._mpy."""
    i = mpy_info >> 10
    return (MPY_ARCHS[i] if 0 <= i < len(MPY_ARCHS) else ""), mpy_info & 0xFF


def remove_snippet(paths: list[str]) -> str:
    """MicroPython code removing `paths` on the board, ignoring those that are absent."""
    return f"import os\nfor n in {paths!r}:\n try:\n  os.remove(n)\n except OSError:\n  pass\n"


class _Tool:
    """A board tool run as a command on the port; its failures end as one line."""

    name = ""
    timeout = 120.0
    silent_hint = ""  # added to "no answer" when the tool times out

    def __init__(self, port: str):
        self.port = port

    def _argv(self, args: list[str]) -> list[str]:
        raise NotImplementedError

    def _run(self, args: list[str], timeout: float | None = None, on_line=None) -> str:
        """The tool with ``args``; ``on_line`` sees each stdout line as it comes (progress)."""
        timeout = self.timeout if timeout is None else timeout
        argv = self._argv(args)
        try:
            if on_line is None:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
                code, out, err = r.returncode, r.stdout, r.stderr
            else:
                code, out, err = _streamed(argv, timeout, on_line)
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.name} on {self.port}: no answer within {timeout:.0f} s"
                            f"{self.silent_hint}") from None
        if code:
            msg = (err.strip() or out.strip() or "failed").splitlines()[-1]
            raise UserError(f"{self.name} on {self.port}: {msg}")
        return out


class Mpremote(_Tool):
    """Talks to the board through mpremote (one connection per chained command list)."""

    name = "mpremote"
    timeout = 300.0
    silent_hint = " (is MicroPython running? try `make repl`)"

    def _argv(self, args: list[str]) -> list[str]:
        return [bin_path("mpremote"), "connect", self.port, *args]

    def mpy_info(self) -> int:
        out = self._run(["exec", "import sys; print(getattr(sys.implementation, '_mpy', 0))"], 30)
        return int(out.strip().splitlines()[-1])

    def copy(self, folder: Path, files: list[str], stale: list[str], say=None) -> None:
        args: list[str] = []
        if stale:
            args += ["exec", remove_snippet(stale), "+"]
        dirs = sorted({str(Path(f).parent) for f in files if "/" in f})
        for d in dirs:
            parts = Path(d).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                args += ["exec", f"import os\ntry:\n os.mkdir({sub!r})\nexcept OSError:\n pass", "+"]
        for f in files:
            args += ["fs", "cp", str(folder / f), ":" + f, "+"]
        done = []

        def progress(line: str) -> None:
            # mpremote announces each copy as "cp <src> :<dst>" before it writes it
            if say and line.startswith("cp ") and " :" in line:
                name = line.rsplit(" :", 1)[1].strip()
                done.append(name)
                size = (folder / name).stat().st_size if (folder / name).is_file() else 0
                say(f"deploy: [{len(done)}/{len(files)}] {name} ({size / 1024:.1f} kB)")

        self._run(args[:-1], on_line=progress if say else None)

    def mip_umqtt(self) -> None:
        try:
            self._run(["mip", "install", "umqtt.simple"])
        except UserError as exc:
            raise UserError(f"{exc} (no internet? copy it instead: UMQTT_FROM=build/mplib, "
                            "or --umqtt-from build/mplib)") from None

    def reset(self) -> None:
        self._run(["reset"], 30)


class Ampy(_Tool):
    """Talks to the board through adafruit-ampy (one connection per command)."""

    name = "ampy"

    def _argv(self, args: list[str]) -> list[str]:
        return [bin_path("ampy"), "--port", self.port, *args]

    def _script(self, code: str) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(code)
        try:
            return self._run(["run", fh.name], 60)
        finally:
            os.unlink(fh.name)

    def mpy_info(self) -> int:
        out = self._script("import sys\nprint(getattr(sys.implementation, '_mpy', 0))\n")
        return int(out.strip().splitlines()[-1])

    def copy(self, folder: Path, files: list[str], stale: list[str], say=None) -> None:
        if stale:
            self._script(remove_snippet(stale))
        if say:
            say(f"deploy: copying {len(files)} files in one ampy connection "
                "(ampy reports no progress; a serial link takes a minute or two)")
        # one connection for the whole staged tree (ampy creates the folders as it goes)
        self._run(["put", str(folder), "/"], timeout=900)

    def mip_umqtt(self) -> None:
        raise UserError("ampy cannot install packages: pass --umqtt-from build/mplib "
                        "(make build/mplib/.stamp fetches umqtt)")

    def reset(self) -> None:
        self._run(["reset", "--hard"], 30)


def _streamed(argv: list[str], timeout: float, on_line) -> tuple[int, str, str]:
    """Run ``argv``, calling ``on_line`` with each stdout line as it is printed."""
    import threading

    env = dict(os.environ, PYTHONUNBUFFERED="1")  # mpremote is Python: lines, not blocks
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            on_line(line.rstrip("\n"))
        proc.wait()
    finally:
        expired = not timer.is_alive()
        timer.cancel()
    reader.join(5)
    if expired and proc.returncode not in (0, None):
        raise subprocess.TimeoutExpired(argv, timeout)
    return proc.returncode, "".join(out), "".join(err)


def add_arguments(p) -> None:
    """Options of `edgewatch deploy`."""
    p.add_argument("--port", default=os.environ.get("PORT") or None,
                   help="serial port of the board, e.g. /dev/ttyUSB0 (env PORT)")
    p.add_argument("--board", default=os.environ.get("BOARD") or DEFAULT_BOARD,
                   help=f"boards/<name>.json (default {DEFAULT_BOARD}; env BOARD)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model folder holding {MODEL_NAME}, or a .ewb file (default {DEFAULT_MODEL})")
    p.add_argument("--no-model", action="store_true", help="deploy without a model: rules alone")
    p.add_argument("--device-id", default=None, help="device id in topics (env DEVICE_ID; default gh-01)")
    p.add_argument("--env-file", default=".env", help="secrets file (default .env)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="extra config.json entry, e.g. --set period_ms=2000 (value parsed as JSON if it can be)")
    p.add_argument("--umqtt-from", default=None, metavar="DIR",
                   help="copy umqtt from DIR/umqtt instead of `mpremote mip install` (offline)")
    p.add_argument("--ampy", action="store_true", default=os.environ.get("AMPY") == "1",
                   help="copy with adafruit-ampy instead of mpremote (env AMPY=1)")
    p.add_argument("--source", action="store_true", help="copy .py sources, no mpy-cross")
    p.add_argument("--no-reset", action="store_true", help="leave the board in the REPL")


def _extra(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            # 'password:87654321' may be a secret with a typo: name only its leading word
            word = re.match(r"[A-Za-z_]*", item).group(0)
            shown = repr(item) if not any(w in item.lower() for w in SECRET_WORDS) else f"{word}..."
            raise UserError(f"--set {shown}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def deploy(port: str, board_name: str, model: str | None, device_id: str | None = None,
           env_file: str | None = ".env", umqtt_from: str | None = None, ampy: bool = False,
           source: bool = False, reset: bool = True, extra: dict | None = None,
           say=print) -> list[str]:
    """Deploy to the board on `port`; returns the board paths written.

    Everything is checked before the board is touched: the config the board would
    refuse at boot (firmware/config.py's own checks, run here) is one line, exit 2."""
    check_port(port)  # only looks at the port: nothing is sent before the checks below
    board = board_config(board_name)
    blob = model_blob(model)
    secrets = read_secrets(env_file)
    if not FIRMWARE.is_dir() or not any(FIRMWARE.glob("*.py")):
        raise UserError(f"{FIRMWARE}: no firmware files")
    config = build_config(board_name, board, secrets, device_id, extra)
    check_config(config, board)
    if umqtt_from and not (Path(umqtt_from) / "umqtt" / "simple.py").is_file():
        raise UserError(f"--umqtt-from {umqtt_from}: no umqtt/simple.py there "
                        "(make build/mplib/.stamp fetches it)")
    if ampy and not umqtt_from:
        raise UserError("ampy cannot install packages: pass --umqtt-from build/mplib "
                        "(make build/mplib/.stamp fetches umqtt)")
    tool = Ampy(port) if ampy else Mpremote(port)
    info = tool.mpy_info()
    arch, version = arch_of(info)
    compile_mpy = not source
    if compile_mpy and version != mpy_cross_version():
        say(f"deploy: the board's .mpy version {version} differs from mpy-cross's; copying sources")
        compile_mpy = False
    with tempfile.TemporaryDirectory(prefix="edgewatch-deploy-") as tmp:
        out = Path(tmp)
        files = stage(out, arch or None, compile_mpy, blob, config, board, umqtt_from,
                      secrets.get("ca"), compile_mpy and native_fits(info), say)
        stale = [f[:-4] + ".py" for f in files if f.endswith(".mpy")]
        if "ewkern.mpy" not in files:  # a C kernels module of an earlier deploy would shadow kernels.py
            stale.append("ewkern.mpy")
        if MODEL_NAME in files:
            # a model received over the air and not loaded yet (a cut before its reset, or
            # during its set-up) would be loaded at boot over the one deployed (firmware/
            # otaboot.py); and the refusal of an earlier one is no news for this model
            stale += OTA_LEFTOVERS
        size = sum((out / f).stat().st_size for f in files)
        say(f"deploy: {len(files)} files, {size} bytes to {port} with {tool.name}"
            f" ({'mpy-cross -march=' + (arch or 'none') if compile_mpy else 'sources'};"
            f" device {config['device']}, board {board_name})")
        tool.copy(out, files, stale, say=say)
    if not umqtt_from:
        say("deploy: installing umqtt.simple with mpremote mip")
        tool.mip_umqtt()
    if reset:
        tool.reset()
        say(f"deploy: {port} reset; the firmware is starting (watch it with `make repl PORT={port}`)")
    return files


def run(args) -> int:
    """Run `edgewatch deploy`."""
    deploy(args.port, args.board, None if args.no_model else args.model, args.device_id,
           args.env_file, args.umqtt_from, args.ampy, args.source, not args.no_reset,
           _extra(args.set))
    return 0
