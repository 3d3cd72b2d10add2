"""Host-service benchmark for `make bench`: collector ingest rate and bridge alert->SMS latency.

    python -m tools.bench_host [--fast] [--devices 1000] [--peers]

Both services run as real `edgewatch` subprocesses against a private Mosquitto
on loopback. The simulated fleet is ``devices`` real MQTT connections (one
paho client each, its own client id and topic), driven from one thread through
paho's external-loop API, so 1,000 boards do not need 1,000 threads.

- Collector: every device publishes ``per_device`` telemetry messages (QoS 1);
  the rate is messages stored in SQLite (read from the collector's Prometheus
  endpoint) per second, from the first publish to the last row committed.
- Bridge: the devices publish one alert each at a steady rate; the bridge sends
  SMS through the real twilio client to a local Messages API (tools/twilio_sink.py);
  latency is the time from the alert's publish to that HTTP request arriving.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from edgewatch.core.schema import DEFAULT_PREFIX
from edgewatch.services.broker import Broker, free_port

from tools.harness import board_telemetry
from tools.twilio_sink import TwilioSink

ROOT = Path(__file__).resolve().parent.parent
HOST_PW = "bench-host-pw"


class Fleet:
    """``n`` device connections on one thread (paho external loop over a selector)."""

    def __init__(self, port: int | list[int], n: int, prefix: str = DEFAULT_PREFIX,
                 user: str = "edgewatch", password: str = HOST_PW, first: int = 0,
                 timeout: float = 30):
        """Devices ``first`` .. ``first + n - 1`` (client ids ``bench-dev-NNNNN``), spread
        over ``port`` (one, or a node list: device i on port i mod len)."""
        ports = port if isinstance(port, list) else [port]
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.acked = 0
        self.prefix = prefix
        for i in range(first, first + n):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-dev-{i:05d}")
            c.username_pw_set(user, password)
            c.max_inflight_messages_set(100)
            c.max_queued_messages_set(0)
            c.on_publish = self._on_publish
            c.connect("127.0.0.1", ports[i % len(ports)], keepalive=300)
            self.sel.register(c.socket(), selectors.EVENT_READ, c)
            self.clients.append(c)
        self.pump(until=lambda: all(c.is_connected() for c in self.clients), timeout=timeout)

    def _on_publish(self, *_args):
        self.acked += 1

    def pump(self, until=None, timeout: float = 0.0, scan: bool = True) -> None:
        """Run the network loop until ``until()`` holds or ``timeout`` passes. ``scan``: also
        write what any client has left to write (a pass over every connection: a thousand
        calls); False for a caller whose publishes went through ``publish``, which writes
        its own, so the load generator spends its CPU on the messages."""
        deadline = time.monotonic() + timeout
        while True:
            if scan:
                for c in self.clients:
                    if c.want_write():
                        c.loop_write()
            for key, _ in self.sel.select(timeout=0.005):
                key.data.loop_read()
            if until is not None and until():
                return
            if time.monotonic() >= deadline:
                if until is not None:
                    raise TimeoutError("fleet: condition not reached")
                return

    def publish(self, i: int, kind: str, msg: dict) -> None:
        c = self.clients[i]
        c.publish(f"{self.prefix}/{msg['device']}/{kind}", json.dumps(msg, separators=(",", ":")),
                  qos=1)
        if c.want_write():  # paho writes at once; what the socket did not take yet
            c.loop_write()

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
        self.pump(timeout=0.2)
        for c in self.clients:
            try:
                self.sel.unregister(c.socket())
            except Exception:
                pass


def _service(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c",
                             "import sys; from edgewatch.cli import main; sys.exit(main())", *args],
                            cwd=log.parent, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def _env(broker: Broker, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "EDGEWATCH_", "MQTT_"))}
    env.update(EDGEWATCH_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}", MQTT_USERNAME="edgewatch",
               MQTT_PASSWORD=HOST_PW, PYTHONPATH=str(ROOT), **extra)
    return env


def _metric(port: int, name: str) -> float:
    # ``name[]`` asks prometheus_client for this one family: a full scrape renders
    # a last-seen gauge per device (1,000 here) inside the collector, and polling
    # that every 20 ms cost the measured collector about a third of its rate.
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]={name}",
                                  timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_started(log: Path, proc: subprocess.Popen, word: str) -> None:
    deadline = time.monotonic() + 30
    while word not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"service did not start: {log.read_text()[-1500:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _publish_rounds(fleet: Fleet, rounds: range) -> int:
    n = len(fleet.clients)
    fleet.acked = 0
    for k in rounds:
        for i in range(n):
            fleet.clients[i].publish(f"{fleet.prefix}/dev-{i:05d}/telemetry", board_telemetry(
                f"dev-{i:05d}", k, 1_700_000_000 + k, 20 + (i + k) % 50 / 10, 45.0), qos=1)
        fleet.pump(timeout=0.0)
    total = n * len(rounds)
    # the broker PUBACKs each publish once it holds it (also for a paused subscriber)
    fleet.pump(until=lambda: fleet.acked >= total, timeout=180)
    return total


def _wait_stored(port: int, total: int, timeout: float = 180,
                 poll: float = 0.02) -> tuple[float, float]:
    """(stored, Unix time when the count was reached), polling the collector's metrics every
    ``poll`` s (each poll is an HTTP request the collector answers: CPU it spends)."""
    stored, deadline = 0.0, time.monotonic() + timeout
    while stored < total and time.monotonic() < deadline:
        time.sleep(poll)
        stored = _metric(port, "edgewatch_records_stored_total")
    return stored, time.time()


def bench_collector(folder: Path, broker: Broker, fleet: Fleet, per_device: int) -> dict:
    """Telemetry stored per second by one `edgewatch collect` into SQLite.

    Two figures: *live*, the fleet publishing while the collector stores (bounded
    by how fast this Python fleet can publish), and *backlog*, the collector
    draining messages the broker held for its session while it was stopped
    (what the collector itself can store per second).
    """
    db = folder / "bench.db"
    n = len(fleet.clients)

    def start(tag: str, client_id: str = "bench-collector", group: str | None = None):
        port = free_port()
        log = folder / f"collector-{tag}.log"
        proc = _service(["collect", "--db", f"sqlite:///{db}", "--metrics-port", str(port),
                         "--client-id", client_id, "--no-discovery", "--log-level", "warning",
                         *(["--group", group] if group else [])], _env(broker), log)
        _wait_started(log, proc, "collecting into")
        return proc, port

    proc, port = start("live")
    try:
        t0 = time.time()
        total = _publish_rounds(fleet, range(per_device))
        t_pub = time.time() - t0
        stored_live, t_end = _wait_stored(port, total)
    finally:
        _stop(proc)
    live_rate = stored_live / (t_end - t0)
    # backlog: the broker keeps QoS 1 messages for the stopped collector's session
    total2 = _publish_rounds(fleet, range(per_device, 2 * per_device))
    proc, port = start("backlog")
    try:
        stored_backlog, t_end = _wait_stored(port, total2)
    finally:
        _stop(proc)
    import sqlite3

    def first_arrival(seq_from: int) -> float:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT MIN(received) FROM telemetry WHERE seq >= ?",
                             (seq_from,)).fetchone()[0]

    backlog_rate = stored_backlog / (t_end - first_arrival(per_device))
    # scale-out: two collectors in one shared-subscription group drain the next backlog
    procs = [start(f"group{k}", f"bench-group-{k}", "bench") for k in (1, 2)]
    for p, _ in procs:
        _stop(p)
    total3 = _publish_rounds(fleet, range(2 * per_device, 3 * per_device))
    procs = [start(f"group{k}b", f"bench-group-{k}", "bench") for k in (1, 2)]
    try:
        deadline, stored3 = time.monotonic() + 180, 0.0
        while stored3 < total3 and time.monotonic() < deadline:
            time.sleep(0.02)
            stored3 = sum(_metric(port, "edgewatch_records_stored_total") for _, port in procs)
        t_end3 = time.time()
    finally:
        for p, _ in procs:
            _stop(p)
    group_rate = stored3 / (t_end3 - first_arrival(2 * per_device))
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
    return {"collector_devices": n, "collector_messages": total + total2 + total3,
            "collector_rows_in_db": rows,
            "collector_live_msgs_per_s": round(live_rate, 1),
            "collector_live_publish_msgs_per_s": round(total / t_pub, 1),
            "collector_backlog_msgs_per_s": round(backlog_rate, 1),
            "collector_group2_backlog_msgs_per_s": round(group_rate, 1),
            "collector_msgs_per_s": round(max(live_rate, backlog_rate), 1)}


def _alert_latency(fleet: Fleet, sink: TwilioSink, alerts: int, rate: float) -> dict:
    """Publish ``alerts`` alerts at ``rate``/s; latency from each publish to its SMS request."""
    sent: dict[str, float] = {}
    n = len(fleet.clients)
    first = len(sink.requests)
    t0 = time.perf_counter()
    for j in range(alerts):
        i = j % n
        value = 30.0 + j / 100  # makes each SMS text unique, to match it back
        msg = {"v": 1, "device": f"dev-{i:05d}", "seq": 10**6 + j, "t": None,
               "sample": 10**6 + j - 1, "rule": "band", "channel": "temperature",
               "value": value, "band": [21.1, 21.7], "pred": 21.4, "model": None}
        due = t0 + j / rate
        while time.perf_counter() < due:
            fleet.pump(timeout=0.0, scan=False)
        sent[f"dev-{i:05d}: temperature {value:.4g} "] = time.time()
        fleet.publish(i, "alert", msg)
        fleet.pump(timeout=0.0, scan=False)
    deadline = time.monotonic() + 120
    while len(sink.requests) - first < alerts and time.monotonic() < deadline:
        fleet.pump(timeout=0.05)
    lat = []
    for r in list(sink.requests)[first:]:
        key = r["Body"].split("edgewatch ", 1)[1].split("outside")[0]
        if key in sent:
            lat.append((r["t"] - sent[key]) * 1000)
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1) if lat else None

    return {"alerts": alerts, "sms_requests": len(sink.requests) - first, "rate_per_s": rate,
            "latency_ms_p50": pct(50), "latency_ms_p99": pct(99),
            "latency_ms_max": round(lat[-1], 1) if lat else None}


def _sink() -> TwilioSink:
    return TwilioSink(account_sid="AC" + "b" * 32, auth_token="bench-token")


def _bridge(folder: Path, broker: Broker, sink: TwilioSink, tag: str) -> subprocess.Popen:
    log = folder / f"bridge-{tag}.log"
    env = _env(broker, TWILIO_ACCOUNT_SID=sink.account_sid, TWILIO_AUTH_TOKEN=sink.auth_token,
               TWILIO_FROM="+15005550006", TWILIO_TO="+15551230001",
               TWILIO_API_BASE=sink.url, EDGEWATCH_COOLDOWN="0",
               EDGEWATCH_MAX_PER_MINUTE="0")
    proc = _service(["bridge", "--outbox", str(folder / f"outbox-{tag}.db"), "--log-level",
                     "warning"], env, log)
    _wait_started(log, proc, "bridge running")
    return proc


def bench_bridge(folder: Path, broker: Broker, fleet: Fleet, alerts: int, rate: float) -> dict:
    """Alert publish -> SMS request latency through one `edgewatch bridge`."""
    with _sink() as sink:
        proc = _bridge(folder, broker, sink, "latency")
        try:
            return {f"bridge_{k}": v for k, v in _alert_latency(fleet, sink, alerts, rate).items()}
        finally:
            _stop(proc)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a running process, all its threads, in ns resolution (the scheduler's
    per-thread schedstat; /proc/PID/stat counts 10 ms ticks). A thread that ended since is
    not counted: the services' threads live as long as they do."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def _bare(role: str, broker: Broker, count: int, *extra: str, env: dict | None = None):
    proc = subprocess.Popen([sys.executable, "-m", "tools.bare_peers", role, "--port",
                             str(broker.port), "--count", str(count), *extra],
                            cwd=ROOT, env={**_env(broker), "BARE_PASSWORD": HOST_PW, **(env or {})},
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"bare {role} peer did not start")
    return proc


# While the collector's CPU time is measured, its progress is read every 0.1 s, not every
# 20 ms: each read is an HTTP request on a new thread of the collector's metrics server,
# and 50 of them a second were ~10% of its CPU (py-spy), work its bare peer is never asked
# for. The CPU figure needs the end, not its exact time.
CPU_POLL = 0.1


DATABASES = ("sqlite", "postgresql")
POSTGRESQL = "postgresql://postgres@127.0.0.1:5432/test"


class _NoDatabase(Exception):
    pass


def _collector_cpu(folder: Path, broker: Broker, fleet: Fleet, per_device: int, total: int,
                   db: str) -> tuple[float, float]:
    """The collector's CPU seconds per 1,000 stored into ``db``: live (the fleet publishing
    while it runs, start-up excluded) and backlog (paused with SIGSTOP while the fleet
    publishes, then draining what the broker kept; the same process, no start-up)."""
    import uuid

    from edgewatch.core.store import Store

    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    url = f"sqlite:///{folder / f'cpu-{prefix}.db'}" if db == "sqlite" else POSTGRESQL
    try:
        Store(url, prefix).close()  # reachable, tables made before the clock starts
    except Exception as exc:
        raise _NoDatabase(f"{db} not reachable: {str(exc).splitlines()[0][:100]}") from None
    port = 0

    def collector(tag: str):
        nonlocal port
        port = free_port()
        log = folder / f"collector-{db}-{tag}.log"
        proc = _service(["collect", "--db", url, "--table-prefix", prefix, "--metrics-port",
                         str(port), "--client-id", f"bench-collector-cpu-{db}", "--no-discovery",
                         "--log-level", "warning"], _env(broker), log)
        _wait_started(log, proc, "collecting into")
        return proc

    try:
        proc = collector("live")
        try:
            time.sleep(0.5)
            cpu0 = _cpu_seconds(proc.pid)
            _publish_rounds(fleet, range(2 * 10**5, 2 * 10**5 + per_device))
            stored, _ = _wait_stored(port, total, poll=CPU_POLL)
            live = _cpu_seconds(proc.pid) - cpu0
        finally:
            _stop(proc)
        proc = collector("backlog")
        try:
            time.sleep(0.5)
            proc.send_signal(signal.SIGSTOP)
            cpu0 = _cpu_seconds(proc.pid)
            _publish_rounds(fleet, range(3 * 10**5, 3 * 10**5 + per_device))
            proc.send_signal(signal.SIGCONT)
            stored2, _ = _wait_stored(port, total, poll=CPU_POLL)
            backlog = _cpu_seconds(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGCONT)
            _stop(proc)
    finally:
        if db != "sqlite":
            store = Store(url, prefix)
            try:
                for table in store.names.values():
                    store.conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
                store.conn.commit()
            finally:
                store.close()
    return round(1000 * live / max(stored, 1), 4), round(1000 * backlog / max(stored2, 1), 4)


def bench_peers(folder: Path, broker: Broker, fleet: Fleet, per_device: int, alerts: int,
                rate: float = 500.0) -> dict:
    """The services against their bare peers, in the same run (issue 18's ratios).

    - collector: CPU seconds per 1,000 telemetry messages (the firmware's bytes) stored into
      SQLite, then PostgreSQL, against a bare paho subscriber's per 1,000 received: *live*,
      while the same fleet publishes the same messages (startup excluded), and *backlog*,
      each draining the same number of messages the broker kept for its stopped session;
    - bridge: p99 from an alert's publish to its SMS request at ``rate`` alerts/s, against a
      bare subscriber that POSTs the same request for each alert (tools/bare_peers.py)."""
    n = len(fleet.clients)
    total = n * per_device
    out = {"peers_messages": total}
    # live: the fleet publishes while each runs (the bare peer times itself from its CONNACK)
    bare = _bare("subscribe", broker, total)
    _publish_rounds(fleet, range(10**5, 10**5 + per_device))
    bare_cpu = float(bare.stdout.readline().split()[1])
    bare.wait(30)

    for db in DATABASES:
        try:
            live, backlog = _collector_cpu(folder, broker, fleet, per_device, total, db)
        except _NoDatabase as exc:
            out[f"collector_{db}_skipped"] = str(exc)
            continue
        key = "" if db == "sqlite" else f"{db}_"
        out[f"collector_{key}cpu_s_per_1000"] = live
        out[f"collector_{key}backlog_cpu_s_per_1000"] = backlog
    out["bare_subscriber_cpu_s_per_1000"] = round(1000 * bare_cpu / total, 4)
    bare = _bare("subscribe", broker, total, "--stay")
    try:
        bare.send_signal(signal.SIGSTOP)
        cpu0 = _cpu_seconds(bare.pid)
        _publish_rounds(fleet, range(4 * 10**5, 4 * 10**5 + per_device))
        bare.send_signal(signal.SIGCONT)
        while not bare.stdout.readline().startswith("done"):
            pass
        bare_back = _cpu_seconds(bare.pid) - cpu0
    finally:
        bare.kill()
        bare.wait(10)
    out["bare_subscriber_backlog_cpu_s_per_1000"] = round(1000 * bare_back / total, 4)
    for db in DATABASES:
        key = "" if db == "sqlite" else f"{db}_"
        for k in ("", "backlog_"):
            if f"collector_{key}{k}cpu_s_per_1000" in out:
                out[f"collector_{key}{k}cpu_ratio"] = round(
                    out[f"collector_{key}{k}cpu_s_per_1000"]
                    / max(out[f"bare_subscriber_{k}cpu_s_per_1000"], 1e-9), 2)
    with _sink() as sink:
        proc = _bridge(folder, broker, sink, "peers")
        try:
            br = _alert_latency(fleet, sink, alerts, rate)
        finally:
            _stop(proc)
        bare = _bare("post", broker, alerts, "--sms", sink.url, "--sid", sink.account_sid,
                     env={"BARE_TOKEN": sink.auth_token})
        try:
            bp = _alert_latency(fleet, sink, alerts, rate)
        finally:
            bare.kill()
            bare.wait(10)
    out.update({"peers_alert_rate_per_s": rate, "bridge_p99_ms_at_rate": br["latency_ms_p99"],
                "bridge_sms_at_rate": br["sms_requests"],
                "bare_poster_p99_ms_at_rate": bp["latency_ms_p99"],
                "bare_poster_sms_at_rate": bp["sms_requests"]})
    if br["latency_ms_p99"] is not None and bp["latency_ms_p99"]:
        out["bridge_p99_ratio"] = round(br["latency_ms_p99"] / bp["latency_ms_p99"], 2)
    out["goal_collector_cpu_ratio"] = 1.5
    out["goal_bridge_p99_ratio"] = 3.0
    return out


def bench(fast: bool = False, devices: int = 1000, per_device: int | None = None,
          alerts: int | None = None, rate: float = 100.0, peers_only: bool = False) -> dict:
    """Collector ingest and bridge latency with ``devices`` simulated boards; a flat dict.
    ``peers_only``: only bench_peers (the services against their bare peers, ~30 s)."""
    per_device = per_device or (5 if fast else 20)
    alerts = alerts or (300 if fast else 1000)
    with tempfile.TemporaryDirectory(prefix="ew-bench-") as tmp:
        folder = Path(tmp)
        with Broker(folder / "mq", users={"edgewatch": HOST_PW}) as broker:
            t0 = time.perf_counter()
            fleet = Fleet(broker.port, devices)
            connect_s = time.perf_counter() - t0
            try:
                out = {"devices": devices, "fleet_connect_seconds": round(connect_s, 2)}
                if not peers_only:
                    out.update(bench_collector(folder, broker, fleet, per_device))
                    out.update(bench_bridge(folder, broker, fleet, alerts, rate=rate))
                out.update(bench_peers(folder, broker, fleet, per_device, alerts))
            finally:
                fleet.close()
    out["goal_collector_msgs_per_s"] = 5000
    out["goal_bridge_p99_ms"] = 100
    try:
        out["load_average_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine
    except OSError:
        pass
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--fast", action="store_true")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--peers", action="store_true",
                   help="only the services against their bare peers (bench_peers)")
    a = p.parse_args()
    print(json.dumps(bench(a.fast, a.devices, peers_only=a.peers), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
