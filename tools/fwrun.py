"""Run the real firmware (firmware/main.py) as a simulated board under the MicroPython unix port.

A folder plays the board's flash: config.json, board.json (resolved by
host/boards.py, as `make deploy` writes it), optionally model.ewb and the
simulation description sim.json read by the stand-ins in tools/standins/
(replayed CSV, injected faults). The process runs with the board's heap budget.

    flash = prepare(tmp / "dev1", "dev1", "esp32-devkitc-dht22", f"mqtt://127.0.0.1:{port}",
                    sim={"csv": occupancy, "start": 2000}, period_ms=50, stop_after=400)
    proc = start(flash, "esp32-devkitc-dht22")
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from host.boards import heap_budget, load_board
from tools import mpy

MAIN = mpy.FIRMWARE / "main.py"


def prepare(folder, device: str, board: str, broker: str, sim: dict | None = None,
            model: str | os.PathLike | None = None, **config) -> Path:
    """Write a board's flash folder; `config` adds/overrides config.json keys."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"device": device, "board": board, "broker": broker}
    cfg.update(config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "board.json").write_text(json.dumps(load_board(board), indent=1))
    (folder / "sim.json").write_text(json.dumps(sim or {}, indent=1))
    if model is not None:
        shutil.copy(model, folder / "model.ewb")
    return folder


def start(folder, board: str, heap: str | None = None, sim_file: str = "sim.json") -> subprocess.Popen:
    """Start firmware/main.py in `folder` with the board's heap budget; stdout+stderr piped."""
    folder = Path(folder)
    return mpy.spawn(script=MAIN, heap=heap or heap_budget(board), cwd=folder,
                     EDGEWATCH_SIM=str(folder / sim_file))


def run(folder, board: str, timeout: float = 120, heap: str | None = None) -> subprocess.CompletedProcess:
    """Run the firmware to completion (config `stop_after`); return the CompletedProcess."""
    folder = Path(folder)
    return mpy.run(script=MAIN, heap=heap or heap_budget(board), cwd=folder, timeout=timeout,
                   check=False, EDGEWATCH_SIM=str(folder / "sim.json"))
