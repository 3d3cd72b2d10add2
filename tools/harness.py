"""What the benchmarks and the tests both need to drive real processes: a clean environment
for a service (none of the caller's broker, Twilio or database settings leak in), and waiting
for a condition with a deadline."""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def service_env(**extra) -> dict:
    """os.environ without EDGEWATCH_/MQTT_/TWILIO_/SMTP_ settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TWILIO_", "EDGEWATCH_", "MQTT_", "SMTP_"))}
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


_FW_SCHEMA = None


def board_telemetry(device: str, seq: int, t: int | None, temperature: float, humidity: float,
                    epoch: int = 1, model: str = "4de3408a") -> bytes:
    """The bytes a board publishes for one sample with a band (firmware/schema.py's own
    builder, run here): the load the benchmarks put on the services is the fleet's, e-notation
    numbers, prediction and band included. Its templates are bytes, which MicroPython's %
    fills with str and CPython's does not: run here on the same templates as str."""
    global _FW_SCHEMA
    if _FW_SCHEMA is None:
        from edgewatch.core.firmware import load

        _FW_SCHEMA = load("schema")
        _FW_SCHEMA._HEAD = _FW_SCHEMA._HEAD.decode()
        _FW_SCHEMA._BAND = _FW_SCHEMA._BAND.decode()
    _FW_SCHEMA.EPOCH = epoch
    p0, p1 = round(temperature * 1000) + 12, round(humidity * 1000) - 30
    head, band = _FW_SCHEMA.telemetry(device, seq, t, [temperature, humidity],
                                      [p0, p1, p0 - 400, p0 + 400, p1 - 900, p1 + 900], [], model)
    return (head + band).encode()


def wait_until(cond, timeout: float = 30.0, step: float = 0.05, what: str = "condition"):
    """Poll ``cond()`` until truthy; its value, or TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def chromium(user_dir: Path, width: int = 1400, height: int = 1000):
    """Debian's headless Chromium under its matching chromedriver (selenium's WebDriver)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", f"--user-data-dir={user_dir}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
