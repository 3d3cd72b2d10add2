"""Erase a board and write the stock MicroPython image with esptool, then deploy the firmware.

    edgewatch flash --port /dev/ttyUSB0 --board esp32-devkitc-dht22 [--firmware image.bin]

The image is the stock MicroPython build for the board's chip (we ship no custom build):
given with ``--firmware``/``FIRMWARE=``, or downloaded once from micropython.org into
``~/.cache/edgewatch/firmware/`` (the file named by the board's ``image``). Every input —
port, board, image (it must look like an ESP image: first byte 0xE9) — is checked before
esptool touches the board. Then ``esptool erase-flash`` and ``esptool write-flash <offset>
<image>`` at the board's flash offset, and ``edgewatch deploy`` with the same options.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from edgewatch.board import deploy as _deploy
from edgewatch.core.errors import UserError

DOWNLOAD_BASE = "https://micropython.org/resources/firmware/"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgewatch" / "firmware"
ESP_IMAGE_MAGIC = 0xE9
DEFAULT_BAUD = 460800


def _field(board: dict, *names, default=None):
    """First of `names` present in the board (top level or under "micropython")."""
    for n in names:
        if n in board:
            return board[n]
        if isinstance(board.get("micropython"), dict) and n in board["micropython"]:
            return board["micropython"][n]
    return default


def flash_plan(board: dict) -> tuple[str, int, str | None]:
    """(esptool chip name, flash offset, MicroPython image file name) from a board file."""
    chip = str(_field(board, "chip", default="")).lower().replace("-", "")
    if not chip:
        raise UserError("board file has no chip")
    offset = _field(board, "flash_offset", "offset")
    if offset is None:
        raise UserError("board file has no flash_offset")
    if isinstance(offset, str):
        offset = int(offset, 0)
    image = _field(board, "image", "firmware", "micropython_image")
    return chip, int(offset), image


def check_image(path: str | os.PathLike) -> Path:
    """The image must exist and start like an ESP image; else one line, nothing written."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"firmware image {p} does not exist (FIRMWARE=path/to/micropython.bin)")
    head = p.read_bytes()[:1]
    if not head or head[0] != ESP_IMAGE_MAGIC:
        raise UserError(f"{p} is not an ESP firmware image (first byte "
                        f"{'empty' if not head else hex(head[0])}, expected 0xe9)")
    return p


def download(image: str, base: str | None = None, cache: Path = CACHE) -> Path:
    """Fetch the board's MicroPython image once (cached); a clear line when offline."""
    if not image:
        raise UserError("the board names no MicroPython image: pass FIRMWARE=path/to/image.bin")
    base = base or os.environ.get("EDGEWATCH_FIRMWARE_URL") or DOWNLOAD_BASE
    dest = cache / Path(image).name
    if dest.is_file():
        return dest
    url = base.rstrip("/") + "/" + image
    cache.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as fh:
            while chunk := r.read(65536):
                fh.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise UserError(f"could not download {url} ({reason}): download it by hand and pass "
                        f"FIRMWARE=path/to/{Path(image).name}") from None
    tmp.rename(dest)
    return dest


def esptool_commands(chip: str, port: str, offset: int, image: str | os.PathLike,
                     baud: int = DEFAULT_BAUD) -> list[list[str]]:
    """The two esptool command lines: erase the whole flash, then write the image at `offset`."""
    base = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud)]
    return [base + ["erase-flash"],
            base + ["write-flash", hex(offset), str(image)]]


def wait_for_micropython(port: str, timeout: float = 30.0) -> None:
    """After a flash the first boot formats the filesystem: wait until the REPL answers."""
    deadline = time.monotonic() + timeout
    time.sleep(2)
    while True:
        try:
            _deploy.Mpremote(port).mpy_info()
            return
        except UserError:
            if time.monotonic() > deadline:
                raise UserError(f"MicroPython on {port} did not answer within {timeout:.0f} s "
                                "after flashing: press the board's EN/RST button and run "
                                "`make deploy`") from None
            time.sleep(2)


def add_arguments(p) -> None:
    """Options of `edgewatch flash` (plus every option of `edgewatch deploy`)."""
    _deploy.add_arguments(p)
    p.add_argument("--firmware", default=os.environ.get("FIRMWARE") or None,
                   help="MicroPython image (.bin) to write (env FIRMWARE); default: download the board's")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"esptool baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--no-deploy", action="store_true", help="only write MicroPython")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the esptool commands")


def run(args) -> int:
    """Run `edgewatch flash`."""
    if not 300 <= args.baud <= 5_000_000:  # esptool would fail after the checks, mid-way
        raise UserError(f"--baud {args.baud}: expected 300..5000000")
    port = _deploy.check_port(args.port, "flash")
    board = _deploy.board_config(args.board)
    chip, offset, image_name = flash_plan(board)
    if not args.no_deploy:
        # deploy's own inputs are checked now too, before the board is erased
        _deploy.model_blob(None if args.no_model else args.model)
        cfg = _deploy.build_config(args.board, board, _deploy.read_secrets(args.env_file),
                                   args.device_id, _deploy._extra(args.set))
        _deploy.check_config(cfg, board)  # what the firmware would refuse at boot
    image = check_image(args.firmware if args.firmware else download(image_name))
    cmds = esptool_commands(chip, port, offset, image, args.baud)
    for cmd in cmds:
        print("flash: " + " ".join(cmd[1:] if cmd[0] == sys.executable else cmd))
        if args.dry_run:
            continue
        if subprocess.run(cmd).returncode:
            raise UserError(f"esptool failed on {port}: hold the BOOT button while it connects, "
                            "or check the port (see README, Troubleshooting)")
    if args.dry_run or args.no_deploy:
        return 0
    wait_for_micropython(port)
    _deploy.deploy(port, args.board, None if args.no_model else args.model, args.device_id,
                   args.env_file, args.umqtt_from, args.ampy, args.source, not args.no_reset,
                   _deploy._extra(args.set))
    return 0
