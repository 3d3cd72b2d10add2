"""`edgewatch dashboard` in Debian's Chromium (Selenium + Debian's chromedriver) against real parts.

A real Mosquitto (password users, the dashboard as a read-only user), the real
collector process, two simulated boards (the real firmware under the MicroPython
unix port, running the golden model so their telemetry carries a prediction and
a band) and the dashboard process. The browser checks what a user sees: the
fleet lists the boards, a reading published over MQTT appears within 2 s, the
device chart draws the board's band, and a hostile device id stays text.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from edgewatch.board.sim import Fleet
from edgewatch.core.store import Store
from edgewatch.services.broker import DEVICE_ACL, Broker
from hostkit import HOST_PW, Board, service_env, spawn, telemetry, wait_until

from tools.harness import chromium

ROOT = Path(__file__).resolve().parents[2]
VIEW_PW = "viewer-secret-pw"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'
ACL = DEVICE_ACL + "\nuser viewer\ntopic read edgewatch/#\n"

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="Debian chromium + chromium-driver not installed "
                                "(make setup installs them)")


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_dashboard(tmp: Path, db: str, *args: str, env: dict | None = None):
    """The dashboard process and its base URL (it binds a free port and prints it)."""
    log = tmp / f"dashboard-{time.monotonic_ns()}.log"
    proc = spawn(["dashboard", "--db", db, "--port", "0", *args],
                 service_env(**(env or {})), log)
    m = wait_until(lambda: re.search(r"dashboard on (http://\S+/)", log.read_text())
                   or (proc.poll() is not None and log.read_text() + "<exited>") or None,
                   timeout=30, what="the dashboard's banner")
    if isinstance(m, str):
        raise AssertionError(m)
    return proc, m.group(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    users = {"edgewatch": HOST_PW, "viewer": VIEW_PW, "sim-01": "pw1", "sim-02": "pw2"}
    procs = []
    with Broker(tmp / "mq", users=users, acl=ACL) as broker:
        db = f"sqlite:///{tmp / 'ew.db'}"
        store = Store(db)  # the tables exist before anything reads them
        # a row no collector would store (ids are checked on intake), as an older
        # or foreign writer could leave it: the page must still show it as text
        store.query("INSERT INTO {devices} (device, state, last_seen, error) VALUES "
                    "({ph}, 'offline', 1, {ph})", (HOSTILE, "<script>x()</script>"))
        store.conn.commit()
        mqtt = ["--mqtt", f"mqtt://127.0.0.1:{broker.port}"]
        procs.append(spawn(["collect", "--db", db, "--username", "edgewatch", "--flush-ms", "20",
                            "--no-discovery", *mqtt], service_env(MQTT_PASSWORD=HOST_PW),
                           tmp / "collector.log"))
        fleet = Fleet(tmp / "fleet", 2, f"mqtt://127.0.0.1:{broker.port}",
                      str(ROOT / "tests/golden/model.ewb"), faults=["spike"], period=0.2,
                      samples=0, clean=1, credentials={"sim-01": "pw1", "sim-02": "pw2"})
        fleet.start()
        dash, url = start_dashboard(tmp, db, "--username", "viewer", *mqtt,
                                    env={"MQTT_PASSWORD": VIEW_PW})
        procs.append(dash)
        driver = chromium(tmp / "chrome")
        try:
            # the boards' samples with a band are stored before the pages are opened
            def banded() -> int:
                try:
                    return store.query("SELECT COUNT(*) FROM {telemetry} WHERE device = "
                                       "'sim-01' AND _pred_temperature IS NOT NULL")[0][0] >= 5
                except Exception:  # the collector has not added the band columns yet
                    store.conn.rollback()
                    return 0

            wait_until(banded, timeout=60, what="sim-01's telemetry with a band in the database")
            yield {"driver": driver, "url": url, "broker": broker, "store": store, "tmp": tmp,
                   "db": db}
        finally:
            driver.quit()
            fleet.stop()
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)
            store.close()


def _open(stack, path: str):
    d = stack["driver"]
    d.get(stack["url"].rstrip("/") + path)
    wait_until(lambda: d.execute_script("return document.body.dataset.loaded === '1'"),
               timeout=20, what=f"{path} to load")
    return d


def _fleet_rows(d) -> dict[str, list[str]]:
    return d.execute_script(
        "const o = {}; document.querySelectorAll('#fleet tbody tr').forEach(tr => "
        "{ o[tr.dataset.device] = [...tr.children].map(td => td.textContent); }); return o;")


def test_fleet_lists_the_boards_and_shows_a_hostile_id_as_text(stack):
    d = _open(stack, "/")
    rows = wait_until(lambda: (r := _fleet_rows(d)) and {"sim-01", "sim-02"} <= set(r) and r,
                      timeout=10, what="both boards in the fleet table")
    assert rows["sim-01"][1] == "online"
    assert re.search(r"temperature \d", rows["sim-01"][3]), rows["sim-01"]
    assert rows["sim-01"][7].isdigit(), rows["sim-01"]  # the board's boot epoch
    assert rows["sim-01"][8] == "4de3408a"  # the golden model's id, from the status
    assert HOSTILE in rows, list(rows)  # shown, character for character, as text
    assert rows[HOSTILE][11] == "<script>x()</script>"
    assert d.execute_script("return document.querySelectorAll('main img, main script').length") == 0
    assert d.title != "pwned"
    # the device link is the id URL-encoded; its page shows the id as text too
    d.find_element("css selector", f'tr[data-device="{HOSTILE.replace(chr(34), chr(92) + chr(34))}"] a').click()
    wait_until(lambda: "/device/" in d.current_url, timeout=10, what="the device page")
    assert d.find_element("id", "devname").text == HOSTILE
    assert d.execute_script("return document.querySelectorAll('main img').length") == 0
    assert d.title != "pwned"


def test_fleet_sorts_and_filters(stack):
    d = _open(stack, "/")
    wait_until(lambda: {"sim-01", "sim-02"} <= set(_fleet_rows(d)), timeout=10, what="boards")
    order = lambda: d.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#fleet tbody tr')].map(tr => tr.dataset.device)")
    th = d.find_element("css selector", '#fleet th[data-key="device"]')
    th.click()  # already sorted by device: descending now
    assert order() == sorted(order(), reverse=True)
    th.click()
    assert order() == sorted(order())
    d.find_element("id", "filter").send_keys("sim-02")
    wait_until(lambda: order() == ["sim-02"], timeout=5, what="the filter to keep sim-02 only")


def test_a_reading_published_over_mqtt_appears_within_two_seconds(stack):
    b = Board(stack["broker"], "probe-01", user="edgewatch", password=HOST_PW)
    try:
        b.publish("telemetry", telemetry("probe-01", 1, t=time.time(), temperature=11.25))
        wait_until(lambda: stack["store"].query("SELECT COUNT(*) FROM {telemetry} WHERE "
                                                "device = 'probe-01'")[0][0], timeout=10,
                   what="probe-01 stored")
        d = _open(stack, "/")
        wait_until(lambda: "probe-01" in _fleet_rows(d), timeout=10, what="probe-01 listed")
        assert "11.25" in _fleet_rows(d)["probe-01"][3]
        t0 = time.monotonic()
        b.publish("telemetry", telemetry("probe-01", 2, t=time.time(), temperature=77.75,
                                         humidity=55.5))
        wait_until(lambda: "77.75" in _fleet_rows(d)["probe-01"][3], timeout=2.0, step=0.02,
                   what="the new reading on the page")
        assert time.monotonic() - t0 <= 2.0
    finally:
        b.close()


def _chart_info(stack) -> dict:
    d = _open(stack, "/device/sim-01")
    return d.execute_script("""
        const div = document.getElementById('chart-temperature');
        const by = {}; div.data.forEach(t => { by[t.meta] = t; });
        return {names: div.data.map(t => t.meta), fill: by.hi.fill,
                lo: by.lo.y.filter(v => v !== null).length, hi: by.hi.y.filter(v => v !== null).length,
                pred: by.pred.y.filter(v => v !== null).length, n: by.value.x.length,
                fills: div.querySelectorAll('path.js-fill').length};""")


def test_device_chart_renders_the_band_and_updates_live(stack):
    # on a loaded machine the boards may not have five banded samples yet: open the page
    # again until they have (the assertions below still hold for what it then shows)
    info = wait_until(lambda: (i := _chart_info(stack)) and min(i["lo"], i["hi"], i["pred"]) >= 5
                      and i, timeout=30, step=1.0, what="five banded samples on the chart")
    d = stack["driver"]
    assert {"lo", "hi", "pred", "value", "alerts"} <= set(info["names"]), info
    assert info["fill"] == "tonexty" and info["fills"] >= 1, info
    assert info["lo"] >= 5 and info["hi"] >= 5 and info["pred"] >= 5, info
    n0 = info["n"]
    assert 0 < n0 <= 4000
    # the board keeps sampling: new readings are appended without a reload
    wait_until(lambda: d.execute_script(
        "return document.getElementById('chart-temperature').data"
        ".find(t => t.meta === 'value').x.length") > n0, timeout=5, what="a live point")


def test_api_downsamples_and_is_read_only(stack):
    base = stack["url"].rstrip("/")
    code, body = _get(f"{base}/api/device/sim-01/series?points=10&start=0&end=1e10")
    assert code == 200
    s = json.loads(body)
    assert 0 < len(s["t"]) <= 10 and sum(s["n"]) >= 5
    req = urllib.request.Request(f"{base}/api/fleet", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    code, body = _get(f"{base}/api/device/sim-01/series?start=soon")
    assert code == 400 and "not a number" in body and "Traceback" not in body
    code, body = _get(f"{base}/api/fleet")
    assert VIEW_PW not in body and HOST_PW not in body
