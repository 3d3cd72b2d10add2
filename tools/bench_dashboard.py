"""Dashboard speed: the fleet page and a device chart beside the bare SQL they need.

    python -m tools.bench_dashboard [--devices 1000] [--rows 1000000] [--db sqlite,postgresql]
                                    [--screenshots docs/img]

For each database: 1,000 devices and 1,000,000 telemetry rows (with prediction
and band) are loaded, the real ``edgewatch dashboard`` process is started on
it, and in the same run the median of ``--repeat`` timings of

- the fleet: ``GET /api/fleet`` (HTTP, server and JSON) vs its SQL alone;
- a device chart: ``GET /api/device/<id>/series`` over the device's whole span
  (downsampled to 1500 points) vs the SQL it runs (channels, span, buckets, alerts);

is reported with their ratio (goal <= 2). Then Chromium opens both pages and
the time from navigation to the first render of the data is measured, and the
screenshots go to ``--screenshots`` (the README shows them). Tables get a
``bench_dash_`` prefix and are dropped after each run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench_dash_"
URLS = {"sqlite": None, "postgresql": "postgresql://postgres@127.0.0.1:5432/test"}
CHANNELS = ("temperature", "humidity")


SPIKE_EVERY, SPIKE_AT = 397, 200


def _sample(d: int, i: int, t: float) -> tuple:
    """Device d's i-th reading at time t: (temperature, humidity, predictions, anomaly)."""
    day = math.sin(2 * math.pi * (t / 86400.0) + d * 0.37)
    pt, ph = 21 + 4 * day, 55 - 10 * day
    temp = pt + 0.3 * math.sin(i * 0.7)
    hum = ph + 0.8 * math.sin(i * 0.3)
    spike = i % SPIKE_EVERY == SPIKE_AT
    return temp + 9 * spike, hum, pt, ph, spike


def _rows(devices: int, per_device: int, t_end: float):
    """Synthetic greenhouse readings with a prediction and band, one per minute per device."""
    for d in range(devices):
        dev = f"gh-{d:04d}"
        for i in range(per_device):
            t = t_end - (per_device - i) * 60.0
            temp, hum, pt, ph, spike = _sample(d, i, t)
            yield (dev, i, t, t, int(spike), "band" if spike else "", "3f2a9c1e", temp, hum,
                   pt, pt - 1.2, pt + 1.2, ph, ph - 3.0, ph + 3.0)


def load(store, devices: int, rows: int) -> tuple[float, str]:
    """Fill the store; (seconds, one device id)."""
    from edgewatch.core.schema import parse

    t0 = time.perf_counter()
    now = time.time()
    per = max(1, rows // devices)
    # one sample through the collector's code: creates the channel and band columns
    first = {"v": 1, "device": "gh-0000", "seq": per + 10, "t": now - 1e6, "values":
             {"temperature": 20.0, "humidity": 50.0}, "pred": {"temperature": 20.0,
             "humidity": 50.0}, "band": {"temperature": [19, 21], "humidity": [49, 51]},
             "anomaly": False, "faults": [], "model": "3f2a9c1e"}
    store.write([(parse("edgewatch/gh-0000/telemetry", json.dumps(first)), now - 1e6)], [])
    cols = ["device", "seq", "t", "received", "anomaly", "faults", "model", *CHANNELS]
    for c in CHANNELS:
        cols += [f"_pred_{c}", f"_lo_{c}", f"_hi_{c}"]
    q = store.d.q
    cur = store.conn.cursor()
    if store.d.name == "postgresql":
        with cur.copy(f"COPY {store.t_tel} ({', '.join(q(c) for c in cols)}) FROM STDIN") as cp:
            for r in _rows(devices, per, now):
                cp.write_row(r)
    else:
        sql = store.d.insert_new(store.t_tel, cols)
        batch = []
        for r in _rows(devices, per, now):
            batch.append(r)
            if len(batch) == 20000:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)
    store.conn.commit()
    # the newest sample and a status per device, through the collector's code
    tel, stats, alerts = [], [], []
    for d in range(devices):
        dev = f"gh-{d:04d}"
        temp, hum, pt, ph, _ = _sample(d, per, now)
        msg = dict(first, device=dev, seq=per, t=now, values={"temperature": temp,
                   "humidity": hum}, pred={"temperature": pt, "humidity": ph},
                   band={"temperature": [pt - 1.2, pt + 1.2], "humidity": [ph - 3, ph + 3]})
        tel.append((parse(f"edgewatch/{dev}/telemetry", json.dumps(msg)), now))
        st = {"v": 1, "device": dev, "seq": per, "t": None, "state": "online" if d % 17
              else "offline", "fw": "0.1.0", "model": "3f2a9c1e", "heap_free": 21000 + d,
              "outbox": d % 5, "dropped": d % 3, "uptime": 3600}
        stats.append((parse(f"edgewatch/{dev}/status", json.dumps(st)), now))
        for i in range(SPIKE_AT, per, SPIKE_EVERY):  # the alert of each spike
            t = now - (per - i) * 60.0
            temp, _, pt, _, _ = _sample(d, i, t)
            a = {"v": 1, "device": dev, "seq": 10**6 + i, "t": t, "sample": i, "rule": "band",
                 "channel": "temperature", "value": temp, "band": [pt - 1.2, pt + 1.2],
                 "pred": pt, "model": "3f2a9c1e"}
            alerts.append((parse(f"edgewatch/{dev}/alert", json.dumps(a)), now))
    store.write(tel, alerts, stats)
    if store.d.name == "postgresql":
        store.conn.cursor().execute(f"ANALYZE {store.t_tel}")
        store.conn.commit()
    return time.perf_counter() - t0, f"gh-{devices // 2:04d}"


def _server_ms(url: str) -> tuple[float, float]:
    """(the server's own time from its Server-Timing header, the HTTP round trip), in ms."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
        timing = r.headers["server-timing"]
    return float(timing.split("dur=")[1]), (time.perf_counter() - t0) * 1000


def _pair(sql, url: str, repeat: int) -> tuple[float, float, float]:
    """Medians of (bare SQL, server, HTTP round trip) in ms, taken alternately so both see
    the same machine load."""
    sql()
    _server_ms(url)
    a, b, c = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sql()
        a.append((time.perf_counter() - t0) * 1000)
        server, trip = _server_ms(url)
        b.append(server)
        c.append(trip)
    return statistics.median(a), statistics.median(b), statistics.median(c)


def measure(url: str, kind: str, devices: int, rows: int, repeat: int, shots: Path | None,
            tmp: Path) -> dict:
    from edgewatch.core.store import Store
    from edgewatch.services.dashboard import Data

    store = Store(url, PREFIX)
    store.drop()
    store.close()
    store = Store(url, PREFIX)
    proc = None
    try:
        load_s, dev = load(store, devices, rows)
        n = store.count()
        data = Data(store)
        log = tmp / f"dash-{kind}.log"
        proc = subprocess.Popen([sys.executable, "-c", "from edgewatch.cli import main; main()",
                                 "dashboard", "--db", url, "--table-prefix", PREFIX,
                                 "--port", "0", "--no-live"], cwd=ROOT,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)
        base = None
        for _ in range(300):
            m = re.search(r"dashboard on (http://\S+/)", log.read_text())
            if m:
                base = m.group(1)
                break
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-500:])
            time.sleep(0.1)
        if base is None:
            raise RuntimeError("the dashboard did not start")
        lo, hi = data.device_span(dev)

        def fleet_sql():
            store.query(data.fleet_sql())

        def chart_sql():  # what /api/device/<id>/series runs, in the same order
            chans = data.channels(dev)
            data.device_span(dev)
            store.query(data.series_sql(chans), data.series_params(dev, lo, hi, 1500))
            q = store.d.q
            store.query(f"SELECT t, seq, {q('rule')}, channel, {q('value')} FROM {{alerts}} "
                        "WHERE device = {ph} AND t >= {ph} AND t <= {ph} ORDER BY t LIMIT 2000",
                        (dev, lo, hi))

        series_url = f"{base}api/device/{dev}/series?start={lo}&end={hi}&points=1500"
        with urllib.request.urlopen(series_url, timeout=60) as r:
            body = json.loads(r.read())
        out = {"database": kind, "devices": devices, "rows": n, "load s": round(load_s, 1),
               "chart points": len(body["t"])}
        for name, sql, u in (("fleet", fleet_sql, f"{base}api/fleet"),
                             ("chart", chart_sql, series_url)):
            a, b, c = _pair(sql, u, repeat)
            out[f"{name} sql ms"], out[f"{name} server ms"], out[f"{name} http ms"] = a, b, c
            out[f"{name} ratio"] = b / a
        if shutil.which("chromium") and shutil.which("chromedriver"):
            out.update(browser(base, dev, shots if kind == "sqlite" else None, tmp))
        return out
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        store.drop()
        store.close()


def browser(base: str, dev: str, shots: Path | None, tmp: Path) -> dict:
    """Chromium's time from navigation to the data drawn, and the screenshots."""
    from tools.harness import chromium

    drv = chromium(tmp / "chrome", 1400, 900)
    out = {}
    try:
        for name, path in (("fleet", ""), ("device", f"device/{dev}")):
            times = []
            for _ in range(3):
                drv.get(base + path)
                for _ in range(600):
                    t = drv.execute_script("return document.body.dataset.loadedAt || null")
                    if t:
                        break
                    time.sleep(0.05)
                times.append(float(t))
            out[f"{name} first render ms (browser)"] = statistics.median(times)
            if shots is not None:
                shots.mkdir(parents=True, exist_ok=True)
                time.sleep(0.5)
                drv.save_screenshot(str(shots / f"dashboard-{name}.png"))
    finally:
        drv.quit()
    return out


def bench(fast: bool = False, dbs=("sqlite", "postgresql"), devices: int = 1000,
          rows: int = 1_000_000, repeat: int = 30, screenshots: str | None = "docs/img") -> dict:
    """The figures of every database, as records (make bench's table)."""
    if fast:
        rows, repeat = min(rows, 100_000), min(repeat, 10)
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        for kind in dbs:
            url = URLS.get(kind) or f"sqlite:///{tmp}/bench.db"
            try:
                records.append(measure(url, kind, devices, rows, repeat,
                                       ROOT / screenshots if screenshots else None, Path(tmp)))
            except Exception as exc:  # e.g. no PostgreSQL here: say so, keep the others
                records.append({"database": kind, "error": str(exc).splitlines()[0][:200]})
    return {"records": records,
            "goal": "server time <= 2x the bare SQL (fleet page, device chart)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--screenshots", default="docs/img",
                    help="folder for the screenshots ('' for none)")
    a = ap.parse_args(argv)
    res = bench(dbs=a.db.split(","), devices=a.devices, rows=a.rows, repeat=a.repeat,
                screenshots=a.screenshots or None)
    for r in res["records"]:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
