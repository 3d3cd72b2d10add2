"""List and check the board files in boards/ (chip, pins, sensor, heap budget, image).

`edgewatch boards` lists them; `edgewatch boards NAME` prints the resolved board
(the file merged over the base it extends) as JSON, which `make deploy` copies to
the board as board.json. Every mistake is reported as one line naming the file
and the field, before anything touches a board.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.core.firmware import locate

BOARDS_DIR = locate("boards")

# chip -> (flash offset of the MicroPython image, highest GPIO, input-only GPIOs)
CHIPS = {
    "esp32": ("0x1000", 39, range(34, 40)),
    "esp32s3": ("0x0", 48, range(0)),
    "esp32c3": ("0x0", 21, range(0)),
}
# sensor kind -> the pins it needs
SENSOR_PINS = {"dht11": ("dht",), "dht22": ("dht",), "shtc3": ("sda", "scl")}
MAX_HEAP = 96 * 1024
KEYS = {"extends", "description", "chip", "micropython_board", "micropython_image",
        "flash_offset", "heap_budget", "wdt_timeout_ms", "sensor", "pins", "i2c"}
REQUIRED = KEYS - {"extends", "i2c"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


class BoardError(UserError):
    """A board file problem (one line: file, field, what is wrong)."""


def _read(path: Path, folder: Path) -> dict:
    rel = f"boards/{path.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BoardError(f"{rel}: no such board file (see `edgewatch boards`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BoardError(f"{rel}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BoardError(f"{rel}: expected a JSON object")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise BoardError(f"{rel}: unknown key '{unknown[0]}' (known: {', '.join(sorted(KEYS))})")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _resolve(name: str, folder: Path, seen: tuple = ()) -> dict:
    if name in seen:
        raise BoardError(f"boards/{name}.json: extends itself through {' -> '.join(seen)}")
    data = _read(folder / f"{name}.json", folder)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not re.match(r"^[A-Za-z0-9_-]+$", base_name):
        raise BoardError(f"boards/{name}.json: extends: expected a board file name, got {base_name!r}")
    if not (folder / f"{base_name}.json").exists():
        raise BoardError(f"boards/{name}.json: extends: no boards/{base_name}.json")
    return _merge(_resolve(base_name, folder, seen + (name,)), data)


def _int(rel: str, field: str, v, lo: int, hi: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BoardError(f"{rel}: {field}: expected an integer in {lo}..{hi}, got {v!r}")


def validate(name: str, b: dict) -> dict:
    """Check a resolved board dict; return it with its "name". Raises BoardError."""
    rel = f"boards/{name}.json"
    missing = sorted(REQUIRED - set(b))
    if missing:
        raise BoardError(f"{rel}: {missing[0]}: missing (also not in the base it extends)")
    chip = b["chip"]
    if chip not in CHIPS:
        raise BoardError(f"{rel}: chip: expected one of {', '.join(CHIPS)}, got {chip!r}")
    offset, max_gpio, input_only = CHIPS[chip]
    if b["flash_offset"] != offset:
        raise BoardError(f"{rel}: flash_offset: {chip} images are written at {offset}, "
                         f"got {b['flash_offset']!r}")
    _int(rel, "heap_budget", b["heap_budget"], 16 * 1024, MAX_HEAP)
    _int(rel, "wdt_timeout_ms", b["wdt_timeout_ms"], 1000, 120000)
    image, mp_board = b["micropython_image"], b["micropython_board"]
    if not isinstance(mp_board, str) or not re.match(r"^[A-Z0-9_]+$", mp_board):
        raise BoardError(f"{rel}: micropython_board: expected a micropython.org board id "
                         f"like ESP32_GENERIC, got {mp_board!r}")
    if not isinstance(image, str) or not image.startswith(mp_board + "-") or not image.endswith(".bin"):
        raise BoardError(f"{rel}: micropython_image: expected '{mp_board}-<date>-<version>.bin', "
                         f"got {image!r}")
    sensor = b["sensor"]
    if sensor not in SENSOR_PINS:
        raise BoardError(f"{rel}: sensor: expected one of {', '.join(SENSOR_PINS)}, got {sensor!r}")
    pins = b["pins"]
    if not isinstance(pins, dict):
        raise BoardError(f"{rel}: pins: expected an object of name -> GPIO number")
    for need in SENSOR_PINS[sensor]:
        if pins.get(need) is None:
            raise BoardError(f"{rel}: pins.{need}: missing, a {sensor} needs pins "
                             f"{', '.join(SENSOR_PINS[sensor])}")
    used: dict[int, str] = {}
    for pin_name, gpio in pins.items():
        if gpio is None:
            continue
        if not isinstance(gpio, int) or isinstance(gpio, bool) or not 0 <= gpio <= max_gpio:
            raise BoardError(f"{rel}: pins.{pin_name}: {gpio!r} is not a GPIO of {chip} (0..{max_gpio})")
        if gpio in used:
            raise BoardError(f"{rel}: pins.{pin_name}: GPIO{gpio} is already pins.{used[gpio]}")
        if gpio in input_only:  # DHT data, SDA/SCL and the LED all drive the line
            raise BoardError(f"{rel}: pins.{pin_name}: GPIO{gpio} of {chip} is input-only")
        used[gpio] = pin_name
    if sensor == "shtc3":
        i2c = b.get("i2c")
        if not isinstance(i2c, dict):
            raise BoardError(f"{rel}: i2c: expected {{\"id\": 0, \"freq\": 100000}}")
        _int(rel, "i2c.id", i2c.get("id"), 0, 1)
        _int(rel, "i2c.freq", i2c.get("freq"), 10000, 1000000)
    out = dict(b)
    out["name"] = name
    return out


def board_names(folder: Path = BOARDS_DIR) -> list[str]:
    """Names of the boards (files not starting with '_', which are bases)."""
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("_"))


def load_board(name: str, folder: Path = BOARDS_DIR) -> dict:
    """The resolved, validated board `name` (boards/<name>.json over its base)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BoardError(f"board {name!r}: expected a name like esp32-devkitc-dht22 "
                         f"(known: {', '.join(board_names(folder))})")
    if not (folder / f"{name}.json").exists():
        raise BoardError(f"board {name!r}: no boards/{name}.json "
                         f"(known: {', '.join(board_names(folder))})")
    return validate(name, _resolve(name, folder))


def heap_budget(name: str) -> str:
    """The board's heap budget as a MicroPython `-X heapsize=` value, e.g. '96K'."""
    n = load_board(name)["heap_budget"]
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="print this board, resolved, as JSON (board.json)")


def run(args) -> int:
    """List the boards, or print one resolved board."""
    if args.name:
        print(json.dumps(load_board(args.name), indent=2))
        return 0
    print(f"{'board':<24} {'chip':<8} {'sensor':<6} {'heap':>6}  image")
    for name in board_names():
        b = load_board(name)
        print(f"{name:<24} {b['chip']:<8} {b['sensor']:<6} {b['heap_budget'] // 1024:>5}K  "
              f"{b['micropython_image']} @ {b['flash_offset']}")
    return 0
