"""`pip install .` from a clean checkout gives an `edgewatch` that finds its firmware files.

A non-editable install into a fresh virtual environment (its dependencies chained from
this one's site-packages, `--no-deps`), run from a folder that holds no checkout: the
firmware, the board files and the stand-ins come from the installed package, not from
the repository's relative layout, and no generic top-level `host`/`training`/`tools`
package is installed.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _checkout_copy(dest: Path) -> Path:
    """The tracked (and new, unignored) files of this checkout, as a clean clone would have them."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_pip_install_ships_the_firmware_as_package_data(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    src = _checkout_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (and pip, setuptools) come from this environment's site-packages
    chain = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "zz_chain.pth").write_text("\n".join(dict.fromkeys(chain)) + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps",
                        "--no-warn-script-location", str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(src)  # nothing may still point into the copied checkout

    installed = {p.name for p in purelib.iterdir()}
    assert "edgewatch" in installed
    assert not {"host", "training", "tools", "firmware", "boards"} & installed, installed
    pkg = purelib / "edgewatch"
    for rel in ("firmware/main.py", "firmware/engine.py", "board/profiles/esp32-devkitc-dht22.json",
                "board/standins/machine.py", "training/forecast/data.py"):
        assert (pkg / rel).is_file(), rel

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}", PYTHONPATH="")
    code = ("from edgewatch.core import firmware, mpy\n"
            "for n in ('firmware', 'boards', 'standins'):\n"
            "    print(n, firmware.locate(n))\n"
            "print('version', firmware.load('blob').VERSION)\n"
            "r = mpy.run(code='import schema, sensors; print(\"fw-ok\")')\n"
            "print(r.stdout.strip(), r.stderr.strip())\n")
    r = subprocess.run([str(py), "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stdout.splitlines()[:3]:
        assert line.split()[1].startswith(str(pkg)), r.stdout  # found inside the installed package
    assert "fw-ok" in r.stdout, r.stdout
    r = subprocess.run([str(venv / "bin" / "edgewatch"), "boards"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "esp32-devkitc-dht22" in r.stdout, r.stderr[-2000:]
