"""Ingest on the RabbitMQ cluster beside one Mosquitto: publish rate, collector rate and CPU.

    .venv/bin/python -m tools.bench_cluster [--boards 1000,10000] [--messages 20000] [--procs 4]

Each simulated board is its own MQTT connection (client id, QoS 1, the firmware's own
telemetry bytes), ``--procs`` publisher processes holding ``boards / procs`` connections
each on one thread (tools.bench_host.Fleet), spread over the nodes. The collectors are
stopped while the boards publish, so the publish phase measures what the broker PUBACKs
per second and the drain phase what the collectors store per second, with their CPU
seconds per 1,000 stored messages (on 2 cores the publishers, the nodes and the services
compete: CPU per message shows the scaling shape where the machine is the limit). Setups,
for each fleet size: one collector on Mosquitto, one and two collectors on the three-node
cluster; then the time samples take to flow again after the node the boards use is
killed with -9 (real firmware boards, unix port).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.harness import board_telemetry, service_env, wait_until

ROOT = Path(__file__).resolve().parents[1]


def spawn(args: list[str], env: dict, log: Path):
    import subprocess

    return subprocess.Popen([sys.executable, "-c",
                             "import sys; from edgewatch.cli import main; sys.exit(main())", *args],
                            cwd=log.parent, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def _payload(dev: str, seq: int) -> bytes:
    return board_telemetry(dev, seq, None, 20.0 + seq % 7, 40.0 + seq % 5)


def _raise_fd_limit() -> None:
    """Thousands of connections: the soft limit on open files up to the hard one (brokers
    started after this inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _fleet_worker(ports: list[int], user: str, pw: str, first: int, n: int, per_board: int,
                  go, stop, out) -> None:
    """Boards ``first`` .. ``first + n - 1``, one connection each; for each event in ``go``:
    ``per_board`` messages per board, then report the seconds until all are PUBACKed."""
    _raise_fd_limit()
    from tools.bench_host import Fleet

    t0 = time.monotonic()
    try:
        fleet = Fleet(ports, n, user=user, password=pw, first=first, timeout=600)
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    out.put(("connected", time.monotonic() - t0))
    names = [f"dev-{first + j:05d}" for j in range(n)]
    for r, ev in enumerate(go):
        ev.wait()
        if stop.is_set():
            break
        fleet.acked = 0
        t = time.monotonic()
        for k in range(per_board):
            seq = r * per_board + k
            for c, dev in zip(fleet.clients, names, strict=True):
                c.publish(f"edgewatch/{dev}/telemetry", _payload(dev, seq), qos=1)
            fleet.pump(timeout=0.0)
        fleet.pump(until=lambda: fleet.acked >= n * per_board, timeout=900)
        out.put(("done", time.monotonic() - t))
    fleet.close()


class Boards:
    """``boards`` simulated boards in ``procs`` processes, connected before the clock starts;
    :meth:`publish` runs one round (every board ``per_board`` messages)."""

    def __init__(self, ports: list[int], user: str, pw: str, boards: int, per_board: int,
                 procs: int, rounds: int):
        ctx = mp.get_context("fork")
        self.out = ctx.Queue()
        self.go = [ctx.Event() for _ in range(rounds)]
        self.stop = ctx.Event()
        self.round = 0
        self.boards, self.per_board = boards, per_board
        share = [boards // procs + (k < boards % procs) for k in range(procs)]
        firsts = [sum(share[:k]) for k in range(procs)]
        self.ps = [ctx.Process(target=_fleet_worker, daemon=True,
                               args=(ports, user, pw, firsts[k], share[k], per_board, self.go,
                                     self.stop, self.out)) for k in range(procs) if share[k]]
        t0 = time.monotonic()
        for p in self.ps:
            p.start()
        for _ in self.ps:
            kind, v = self.out.get(timeout=900)
            if kind == "error":
                self.close()
                raise RuntimeError(f"a publisher could not connect its boards: {v}")
        self.connect_s = time.monotonic() - t0

    def publish(self) -> float:
        """One round; PUBACKed messages per second (the slowest process's time)."""
        self.go[self.round].set()
        self.round += 1
        times = []
        for _ in self.ps:
            kind, v = self.out.get(timeout=1800)
            if kind != "done":
                raise RuntimeError(f"a publisher failed: {v}")
            times.append(v)
        return self.boards * self.per_board / max(times)

    def close(self) -> None:
        self.stop.set()  # rounds not run are not published
        for ev in self.go:
            ev.set()
        for p in self.ps:
            p.join(60)
            if p.is_alive():
                p.kill()


def _cpu(pid: int) -> float:
    """CPU seconds of a process's threads, ns resolution (tools.bench_host._cpu_seconds)."""
    from tools.bench_host import _cpu_seconds

    return _cpu_seconds(pid)


def _count(db: Path) -> int:
    try:
        c = sqlite3.connect(db, timeout=30)
        try:
            return c.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        finally:
            c.close()
    except sqlite3.OperationalError:
        return 0


def _start(broker_args: list[str], env: dict, folder: Path, db: Path, tag: str,
           client_id: str) -> subprocess.Popen:
    return spawn(["collect", "--db", f"sqlite:///{db}", "--no-discovery", "--client-id",
                  client_id, *broker_args], env, folder / f"{tag}.log")


def _up(procs, logs, tag: str, db: Path | None = None) -> list[tuple[float, float, int]]:
    """Wait for every collector's "collecting into" line; per collector, when it came (monotonic
    s), its CPU seconds then and (with ``db``) the rows stored then."""
    seen: dict[int, tuple[float, float, int]] = {}

    def ready():
        for k, p in enumerate(procs):
            if p.poll() is not None:
                raise RuntimeError(f"{tag}: collector {k} exited: {logs[k].read_text()[-300:]}")
            if k not in seen and "collecting into" in logs[k].read_text():
                seen[k] = (time.monotonic(), _cpu(p.pid), _count(db) if db else 0)
        return len(seen) == len(procs)

    wait_until(ready, timeout=300, step=0.01, what=f"{tag}: collectors up")
    return [seen[k] for k in range(len(procs))]


def drain(broker_args: list[str], env: dict, folder: Path, n_collectors: int, total: int,
          tag: str) -> dict:
    """Start the collectors on a filled queue; stored msg/s and collector CPU s per 1,000.

    On the cluster (AMQP) from the moment the first collector is up (its "collecting into"
    line; deliveries start after it) to the last row, each collector's CPU from its own line
    on; ``up_spread_s`` says how much later the last one came (a collector that comes late
    finds less to share: after a 10,000-board burst one came up 30 s after the other and the
    first had stored everything). On Mosquitto the persistent
    session's backlog arrives before the SUBACK the collector waits for, so it is read and
    parsed before that line: there from the start of the process to the last row, less
    what the same collector's start costs with nothing queued (measured just before)."""
    db = folder / f"{tag}.db"
    mqtt = broker_args[0][-1].startswith("mqtt")
    blank_s = blank_cpu = 0.0
    if mqtt:
        t = time.monotonic()
        p = _start(broker_args[0], env, folder, folder / f"{tag}-blank.db", f"{tag}-blank",
                   f"bench-{tag}-blank")
        _up([p], [folder / f"{tag}-blank.log"], f"{tag}-blank")
        blank_s, blank_cpu = time.monotonic() - t, _cpu(p.pid)
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    t_spawn = time.monotonic()
    procs = [_start(broker_args[k], env, folder, db, f"{tag}-{k}", f"bench-{tag}")
             for k in range(n_collectors)]
    logs = [folder / f"{tag}-{k}.log" for k in range(n_collectors)]
    ups = _up(procs, logs, tag, db)
    t0, cpu0, first = min(u[0] for u in ups), sum(u[1] for u in ups), min(u[2] for u in ups)
    spread = max(u[0] for u in ups) - t0
    if mqtt:
        t0, cpu0, first = t_spawn + blank_s, blank_cpu, 0
    wait_until(lambda: _count(db) >= total, timeout=900, step=0.05, what=f"{tag}: {total} stored")
    dt = time.monotonic() - t0
    cpu = sum(_cpu(p.pid) for p in procs) - cpu0
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    n = total - first
    return {"stored_per_s": round(n / max(dt, 1e-3)),
            "cpu_s_per_1000": round(1000 * cpu / max(n, 1), 3), "drain_s": round(dt, 2),
            "up_spread_s": round(spread, 1)}


def alert_p99(broker_args: list[str], ports: list[int], user: str, pw: str, folder: Path,
              tag: str, alerts: int = 1000, rate: float = 100.0) -> dict:
    """One `edgewatch bridge` on ``broker_args``; 50 boards on ``ports`` publish ``alerts``
    alerts at ``rate``/s: latency from each publish to its SMS request (Twilio stand-in)."""
    from tools.bench_host import Fleet, _alert_latency, _sink

    with _sink() as sink:
        log = folder / f"bridge-{tag}.log"
        env = service_env(TWILIO_ACCOUNT_SID=sink.account_sid, TWILIO_AUTH_TOKEN=sink.auth_token,
                          TWILIO_FROM="+15005550006", TWILIO_TO="+15551230001",
                          TWILIO_API_BASE=sink.url, EDGEWATCH_COOLDOWN="0",
                          EDGEWATCH_MAX_PER_MINUTE="0")
        proc = spawn(["bridge", "--outbox", str(folder / f"outbox-{tag}.db"), "--log-level",
                      "warning", *broker_args], env, log)
        fleet = None
        try:
            wait_until(lambda: "bridge running" in log.read_text() or proc.poll() is not None,
                       timeout=120)
            if proc.poll() is not None:
                raise RuntimeError(f"{tag}: the bridge exited: {log.read_text()[-300:]}")
            fleet = Fleet(ports, 50, user=user, password=pw, first=90000, timeout=120)
            r = _alert_latency(fleet, sink, alerts, rate)
        finally:
            if fleet is not None:
                fleet.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {"alerts": alerts, "rate_per_s": rate, "sms": r["sms_requests"],
            "p50_ms": r["latency_ms_p50"], "p99_ms": r["latency_ms_p99"]}


def _queued(cl, queue: str) -> int:
    """Messages in ``queue`` (rabbitmqctl list_queues on the first node); 0 if unknown."""
    out = cl.ctl(0, "list_queues", "--quiet", "name", "messages", check=False, timeout=60)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue and parts[1].isdigit():
            return int(parts[1])
    return 0


def _amqp_settled(cl) -> None:
    """Each node accepts an AMQP connection (however long that takes now)."""
    import pika

    creds = pika.PlainCredentials("edgewatch", cl.state["password"])
    for i in range(3):
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", cl.amqp_port(i), credentials=creds, socket_timeout=120,
            stack_timeout=180, blocked_connection_timeout=180)).close()


def node_loss(cl, orders, env: dict, tmp: Path, boards: int = 4) -> float:
    from edgewatch.board.sim import Fleet
    users = {f"sim-{i + 1:02d}": f"pw-{i}" for i in range(boards)}
    defs = tmp / "users.json"
    from edgewatch.services.cluster import definitions

    defs.write_text(json.dumps(definitions("edgewatch", cl.state["password"], users)))
    cl.ctl(0, "import_definitions", str(defs))
    db = tmp / "rec.db"
    cols = [spawn(["collect", "--db", f"sqlite:///{db}", "--no-discovery", *orders[k]], env,
                  tmp / f"rec-{k}.log") for k in range(2)]
    for k in range(2):
        wait_until(lambda k=k: "collecting into" in (tmp / f"rec-{k}.log").read_text(),
                   timeout=60)
    fleet = Fleet(tmp / "fleet", boards, cl.mqtt_url(), None, faults=[], period=0.05,
                  samples=600, clean=boards, credentials=users,
                  extra={"backoff": {"min_ms": 200, "max_ms": 2000}, "drain_ms": 60000})
    fleet.start()
    try:
        wait_until(lambda: _count(db) >= 100 * boards, timeout=120, step=0.05)
        t_kill = time.time()
        cl.kill_node(0)
        fleet.wait(timeout=300)
    finally:
        fleet.stop()
    time.sleep(2)
    c = sqlite3.connect(db, timeout=30)
    rec = [r for (r,) in c.execute("SELECT received FROM telemetry WHERE received > ? "
                                   "ORDER BY received", (t_kill - 1,))]
    c.close()
    for p in cols:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    marks = [t_kill] + [r for r in rec if r > t_kill]
    return max((b - a for a, b in zip(marks, marks[1:], strict=False)), default=float("nan"))


def bench(boards=(1000, 10000), messages: int = 20000, procs: int = 4, fast: bool = False) -> dict:
    """The figures for `make bench` (records: one per fleet size and setup): ``messages``
    per setup, from every board alike."""
    if fast:
        boards, messages = tuple(min(b, 1000) for b in boards), min(messages, 4000)
    from edgewatch.services.broker import Broker
    from edgewatch.services.cluster import Cluster

    _raise_fd_limit()
    records = []
    out = {"records": records}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        tmp = Path(tmp)
        env = service_env()
        with Broker(tmp / "mosq-alerts") as b:
            out["alerts_mosquitto"] = alert_p99(["--broker", f"mqtt://127.0.0.1:{b.port}"],
                                                [b.port], "edgewatch", "unused", tmp, "mosq")
        for n in boards:
            per_board = max(1, messages // n)
            total = n * per_board
            # --- Mosquitto: the collector's persistent session first, then publish, drain
            with Broker(tmp / f"mosq{n}") as b:
                url = [["--broker", f"mqtt://127.0.0.1:{b.port}"]]
                log = tmp / f"mosq{n}-prime.log"
                p = spawn(["collect", "--db", f"sqlite:///{tmp}/prime{n}.db", "--no-discovery",
                           "--client-id", f"bench-mosq{n}", *url[0]], env, log)
                wait_until(lambda log=log: "collecting into" in log.read_text(), timeout=60)
                p.send_signal(signal.SIGTERM)
                p.wait(30)
                # no users on this broker: any name and password are let in
                fleet = Boards([b.port], "edgewatch", "unused", n, per_board, procs, 1)
                try:
                    pub = fleet.publish()
                finally:
                    fleet.close()
                records.append({"boards": n, "messages": total, "setup": "Mosquitto, 1 collector",
                                "connect_s": round(fleet.connect_s, 1),
                                "pubacked_per_s": round(pub),
                                **drain(url, env, tmp, 1, total, f"mosq{n}")})
        # --- the cluster
        cl = Cluster(tmp / "cluster")
        try:
            t = time.monotonic()
            cl.up()
            out["cluster_up_s"] = round(time.monotonic() - t, 1)
            amqp = cl.amqp_url()
            head, hosts = amqp.rsplit("@", 1)
            hosts = hosts.split(",")
            orders = [["--broker", f"{head}@{','.join(hosts[(k + j) % 3] for j in range(3))}"]
                      for k in range(2)]
            ports = [cl.mqtt_port(i) for i in range(3)]
            pw = cl.state["password"]
            for n in boards:
                per_board = max(1, messages // n)
                total = n * per_board
                fleet = Boards(ports, "edgewatch", pw, n, per_board, procs, 2)
                try:
                    for k in (1, 2):
                        pub = fleet.publish()
                        # the nodes settle (every message in the collectors' queue) before the
                        # collectors connect: right after 10,000 boards' burst on 2 cores a node
                        # took longer than a service's 30 s start to accept an AMQP connection
                        wait_until(lambda total=total: _queued(cl, "edgewatch.collector") >= total,
                                   timeout=600, step=1.0, what=f"{total} messages queued")
                        _amqp_settled(cl)
                        records.append({"boards": n, "messages": total,
                                        "setup": f"cluster (3 nodes), {k} collector"
                                                 f"{'s' if k > 1 else ''}",
                                        "connect_s": round(fleet.connect_s, 1),
                                        "pubacked_per_s": round(pub),
                                        **drain(orders[:k], env, tmp, k, total, f"cl{k}-{n}")})
                finally:
                    fleet.close()
            out["alerts_cluster"] = alert_p99(orders[0], ports, "edgewatch", pw, tmp, "cluster")
            # recovery: real boards (firmware, unix port) on the node list, two collectors;
            # the boards' node (also a collector's and the queues' leader) killed with -9;
            # recovery = the longest pause in stored samples' arrival around the kill
            out["node_loss_longest_pause_s"] = round(node_loss(cl, orders, env, tmp), 2)
        finally:
            cl.down()
    out.update(procs=procs, cores=os.cpu_count())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="1000,10000",
                    help="fleet sizes, comma-separated (one MQTT connection per board)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per setup")
    ap.add_argument("--procs", type=int, default=4, help="publisher processes")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    try:
        boards = tuple(int(x) for x in a.boards.split(","))
    except ValueError:
        boards = ()
    if not boards or min(boards) < 1 or a.messages < 1 or a.procs < 1:
        print(f"bench_cluster: --boards {a.boards!r}: positive integers, comma-separated; "
              "--messages and --procs >= 1", file=sys.stderr)
        return 2
    r = bench(boards, a.messages, a.procs)
    print(f"{r['procs']} publisher processes, {r['cores']} cores; cluster up in "
          f"{r['cluster_up_s']:.0f} s")
    print(f"{'boards':>7} {'messages':>8} {'setup':<34} {'connect s':>9} {'PUBACKed msg/s':>15} "
          f"{'stored msg/s':>13} {'collector CPU s/1000':>21} {'last up s':>9}")
    for x in r["records"]:
        print(f"{x['boards']:>7} {x['messages']:>8} {x['setup']:<34} {x['connect_s']:>9.1f} "
              f"{x['pubacked_per_s']:>15.0f} {x['stored_per_s']:>13.0f} "
              f"{x['cpu_s_per_1000']:>21.3f} {x['up_spread_s']:>9.1f}")
    for where in ("mosquitto", "cluster"):
        al = r[f"alerts_{where}"]
        print(f"alert -> SMS request through {where}: {al['alerts']} alerts at "
              f"{al['rate_per_s']:.0f}/s, {al['sms']} SMS, p50 {al['p50_ms']} ms, "
              f"p99 {al['p99_ms']} ms")
    print(f"node loss (-9 on the boards' node, a collector's node and the queues' leader; "
          f"4 simulated boards at 20 samples/s): longest pause in stored samples "
          f"{r['node_loss_longest_pause_s']:.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
