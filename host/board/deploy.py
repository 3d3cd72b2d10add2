"""Copy the firmware, the model blob and the board's config to a board, install umqtt, reset it.

    edgewatch deploy --port /dev/ttyUSB0 --board esp32-devkitc-dht22 [--model models/default]

Steps, in order, so that nothing is written to the board before every input is known good:

1. check the inputs: the port exists, the board file is valid (host/board/catalog.py), the model
   blob exists, the config builds (secrets from the environment or `.env`, never printed);
2. ask the board which MicroPython it runs (``sys.implementation._mpy``: the .mpy version and
   the native architecture), over the same tool that copies;
3. stage the files in a private temporary folder: firmware/*.py precompiled with mpy-cross for
   that architecture (``main.py`` and ``boot.py`` stay source: the board runs them by name),
   the model blob, ``config.json``, and umqtt from ``--umqtt-from DIR`` when given;
4. copy them with mpremote (``AMPY=1``/``--ampy``: adafruit-ampy), remove stale ``.py`` twins of
   the copied ``.mpy`` (a .py would shadow the new .mpy), install umqtt with
   ``mpremote mip install umqtt.simple`` unless ``--umqtt-from`` was given, and reset the board.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgewatch.core import firmware as firmware_files
from edgewatch.core.errors import UserError

ROOT = firmware_files.ROOT
FIRMWARE = firmware_files.locate("firmware")
DEFAULT_BOARD = "esp32-devkitc-dht22"
DEFAULT_MODEL = "models/default"
CONFIG_NAME = "config.json"
MODEL_NAME = "model.ewb"
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
}
BOARD_FILE = "board.json"
CA_NAME = "ca.pem"


def bin_path(name: str) -> str:
    """A console script installed next to this Python (the project's .venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise UserError(f"{name} not found: run `make setup`")
    return found


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
    return port


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
    return blob


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
    device = device_id or os.environ.get("DEVICE_ID") or "gh-01"
    if not DEVICE_ID_RE.match(device):
        raise UserError(f"device id {device!r}: use 1-32 characters of A-Z a-z 0-9 _ -")
    if not secrets.get("broker"):
        raise UserError("MQTT_URL is not set: put MQTT_URL=mqtt://host:1883 in .env "
                        "(see .env.example)")
    cfg = {"device": device, "board": board_name, "broker": secrets["broker"]}
    if secrets.get("wifi_ssid"):
        cfg["wifi"] = {"ssid": secrets["wifi_ssid"], "password": secrets.get("wifi_password", "")}
    if secrets.get("user"):
        # the board's own MQTT account; a password alone (the host's) is not the board's
        cfg["user"] = secrets["user"]
        cfg["password"] = secrets.get("password", "")
    if secrets.get("ota_key"):
        cfg["ota_key"] = secrets["ota_key"]
    if secrets.get("ca"):
        if not Path(secrets["ca"]).is_file():
            raise UserError(f"MQTT_CA_FILE {secrets['ca']}: no such file")
        cfg["ca"] = CA_NAME
    cfg.update(extra or {})
    return cfg


def mpy_cross(src: Path, dst: Path, arch: str | None, name: str | None = None) -> None:
    """Precompile one module; a failure names the file and mpy-cross's message."""
    argv = [bin_path("mpy-cross")]
    if arch:
        argv.append(f"-march={arch}")
    # tracebacks on the board name the board's file, not the host path it was built from
    argv += ["-s", name or src.name, str(src), "-o", str(dst)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"mpy-cross {src.name}: {(r.stderr or r.stdout).strip().splitlines()[-1]}")


def mpy_cross_version() -> int:
    """The .mpy format version this mpy-cross writes (6 for MicroPython ≥ 1.20)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "v.py"
        src.write_text("x = 1\n")
        mpy_cross(src, src.with_suffix(".mpy"), None)
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
            mpy_cross(src, dst, arch, rel.as_posix())
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
                mpy_cross(src, dst, arch, rel.as_posix())
            else:
                shutil.copy(src, dst)
            files.append(dst.relative_to(out).as_posix())
    return files


def stage(out: Path, arch: str | None, compile_mpy: bool, blob: Path | None, config: dict,
          board: dict, umqtt_from: str | None, ca_file: str | None = None) -> list[str]:
    """Write every file the board gets under `out`; returns their board-relative paths."""
    files = stage_code(out, arch, compile_mpy, umqtt_from)
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


class Mpremote:
    """Talks to the board through mpremote (one connection per chained command list)."""

    name = "mpremote"

    def __init__(self, port: str):
        self.port = port

    def _run(self, args: list[str], timeout: float = 300) -> str:
        argv = [bin_path("mpremote"), "connect", self.port, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"mpremote on {self.port}: no answer within {timeout:.0f} s "
                            "(is MicroPython running? try `make repl`)") from None
        if r.returncode:
            msg = (r.stderr.strip() or r.stdout.strip() or "failed").splitlines()[-1]
            raise UserError(f"mpremote on {self.port}: {msg}")
        return r.stdout

    def mpy_info(self) -> int:
        out = self._run(["exec", "import sys; print(getattr(sys.implementation, '_mpy', 0))"], 30)
        return int(out.strip().splitlines()[-1])

    def copy(self, folder: Path, files: list[str], stale: list[str]) -> None:
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
        self._run(args[:-1])

    def mip_umqtt(self) -> None:
        try:
            self._run(["mip", "install", "umqtt.simple"])
        except UserError as exc:
            raise UserError(f"{exc} (no internet? copy it instead: UMQTT_FROM=build/mplib, "
                            "or --umqtt-from build/mplib)") from None

    def reset(self) -> None:
        self._run(["reset"], 30)


class Ampy:
    """Talks to the board through adafruit-ampy (one connection per command)."""

    name = "ampy"

    def __init__(self, port: str):
        self.port = port

    def _run(self, args: list[str], timeout: float = 120) -> str:
        argv = [bin_path("ampy"), "--port", self.port, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"ampy on {self.port}: no answer within {timeout:.0f} s") from None
        if r.returncode:
            msg = (r.stderr.strip() or r.stdout.strip() or "failed").splitlines()[-1]
            raise UserError(f"ampy on {self.port}: {msg}")
        return r.stdout

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

    def copy(self, folder: Path, files: list[str], stale: list[str]) -> None:
        if stale:
            self._script(remove_snippet(stale))
        # one connection for the whole staged tree (ampy creates the folders as it goes)
        self._run(["put", str(folder), "/"], timeout=900)

    def mip_umqtt(self) -> None:
        raise UserError("ampy cannot install packages: pass --umqtt-from build/mplib "
                        "(make build/mplib/.stamp fetches umqtt)")

    def reset(self) -> None:
        self._run(["reset", "--hard"], 30)


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
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def deploy(port: str, board_name: str, model: str | None, device_id: str | None = None,
           env_file: str | None = ".env", umqtt_from: str | None = None, ampy: bool = False,
           source: bool = False, reset: bool = True, extra: dict | None = None,
           say=print) -> list[str]:
    """Deploy to the board on `port`; returns the board paths written."""
    check_port(port)
    board = board_config(board_name)
    blob = model_blob(model)
    secrets = read_secrets(env_file)
    config = build_config(board_name, board, secrets, device_id, extra)
    if not FIRMWARE.is_dir() or not any(FIRMWARE.glob("*.py")):
        raise UserError(f"{FIRMWARE}: no firmware files")
    if umqtt_from and not (Path(umqtt_from) / "umqtt" / "simple.py").is_file():
        raise UserError(f"--umqtt-from {umqtt_from}: no umqtt/simple.py there "
                        "(make build/mplib/.stamp fetches it)")
    if ampy and not umqtt_from:
        raise UserError("ampy cannot install packages: pass --umqtt-from build/mplib "
                        "(make build/mplib/.stamp fetches umqtt)")
    tool = Ampy(port) if ampy else Mpremote(port)
    arch, version = arch_of(tool.mpy_info())
    compile_mpy = not source
    if compile_mpy and version != mpy_cross_version():
        say(f"deploy: the board's .mpy version {version} differs from mpy-cross's; copying sources")
        compile_mpy = False
    with tempfile.TemporaryDirectory(prefix="edgewatch-deploy-") as tmp:
        out = Path(tmp)
        files = stage(out, arch or None, compile_mpy, blob, config, board, umqtt_from,
                      secrets.get("ca"))
        stale = [f[:-4] + ".py" for f in files if f.endswith(".mpy")]
        size = sum((out / f).stat().st_size for f in files)
        say(f"deploy: {len(files)} files, {size} bytes to {port} with {tool.name}"
            f" ({'mpy-cross -march=' + (arch or 'none') if compile_mpy else 'sources'};"
            f" device {config['device']}, board {board_name})")
        tool.copy(out, files, stale)
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
