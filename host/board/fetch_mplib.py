"""Fetch micropython-lib packages (umqtt) from PyPI into a folder for the unix port and deploys.

MicroPython packages on PyPI ship no setup.py, so pip refuses to install them; `pip download
--no-clean` still unpacks them, and we take the module files from the unpacked tree.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

PACKAGES = {"micropython-umqtt.simple": ["umqtt/simple.py"]}


def fetch(dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pkg, files in PACKAGES.items():
            env = dict(os.environ, TMPDIR=tmp)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-clean",
                 "-d", tmp, pkg],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )
            for rel in files:
                hits = glob.glob(os.path.join(tmp, "pip-download-*", "*", rel))
                if not hits:
                    sys.exit(f"fetch_mplib: {pkg}: {rel} not found in the downloaded package")
                os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
                shutil.copy(hits[0], os.path.join(dest, rel))
    # umqtt is a package on the board; the unix port needs the __init__ too.
    open(os.path.join(dest, "umqtt", "__init__.py"), "a").close()
    print(f"fetch_mplib: umqtt ready in {dest}")


if __name__ == "__main__":
    fetch(sys.argv[1] if len(sys.argv) > 1 else "build/mplib")
