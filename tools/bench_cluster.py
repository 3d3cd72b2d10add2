"""Ingest on the RabbitMQ cluster beside one Mosquitto: publish rate, collector rate and CPU.

    .venv/bin/python -m tools.bench_cluster [--messages 20000] [--devices 200] [--procs 2]

For each setup the boards' messages (the firmware's telemetry format, QoS 1, from
``--procs`` publisher processes spread over the nodes) are published first, with the
collectors stopped, so the publish phase measures what the broker PUBACKs per second
and the drain phase what the collectors store per second, with their CPU seconds per
1,000 stored messages (on 2 cores the publishers and the services compete, so CPU per
message shows the scaling shape where the machine is the limit). Setups: one collector
on Mosquitto, one and two collectors on the three-node cluster; then the time samples
take to flow again after the node the publishers use is killed with -9.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sqlite3
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


def _publisher(port: int, user: str | None, pw: str | None, devices: list[str], per_device: int,
               seq0: int, out) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    if user:
        c.username_pw_set(user, pw)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.monotonic()
    last = None
    for s in range(seq0, seq0 + per_device):
        for d in devices:
            last = c.publish(f"edgewatch/{d}/telemetry", _payload(d, s), qos=1)
    last.wait_for_publish(600)
    while c._out_messages:  # every PUBACK in
        time.sleep(0.01)
    out.put(time.monotonic() - t0)
    c.disconnect()
    c.loop_stop()


def publish(ports: list[int], user, pw, devices: list[str], per_device: int, procs: int,
            seq0: int = 0) -> float:
    """Publish per_device messages for each device from `procs` processes; PUBACKed msg/s."""
    q = mp.Queue()
    ps = []
    for k in range(procs):
        mine = devices[k::procs]
        ps.append(mp.Process(target=_publisher, args=(ports[k % len(ports)], user, pw, mine,
                                                      per_device, seq0, q)))
    t0 = time.monotonic()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.monotonic() - t0
    return len(devices) * per_device / dt


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(db: Path) -> int:
    try:
        c = sqlite3.connect(db, timeout=30)
        try:
            return c.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        finally:
            c.close()
    except sqlite3.OperationalError:
        return 0


def drain(broker_args: list[str], env: dict, folder: Path, n_collectors: int, total: int,
          tag: str) -> dict:
    """Start the collectors on a filled queue; stored msg/s and collector CPU s per 1,000."""
    db = folder / f"{tag}.db"
    procs = []
    t0 = time.monotonic()
    for k in range(n_collectors):
        log = folder / f"{tag}-{k}.log"
        procs.append(spawn(["collect", "--db", f"sqlite:///{db}", "--no-discovery",
                            "--client-id", f"bench-{tag}", *broker_args[k]], env, log))
    wait_until(lambda: _count(db) >= total, timeout=900, step=0.2, what=f"{tag}: {total} stored")
    dt = time.monotonic() - t0
    cpu = sum(_cpu(p.pid) for p in procs)
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    return {"stored_per_s": total / dt, "cpu_s_per_1000": 1000 * cpu / total, "seconds": dt}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    if a.messages < a.devices or a.devices < 1 or a.procs < 1:
        print("bench_cluster: --messages must be >= --devices >= 1, --procs >= 1", file=sys.stderr)
        return 2
    from edgewatch.services.broker import Broker
    from edgewatch.services.cluster import Cluster

    per = a.messages // a.devices
    total = per * a.devices
    devices = [f"bench-{i:05d}" for i in range(a.devices)]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        tmp = Path(tmp)
        env = service_env()
        # --- Mosquitto: the collector's persistent session first, then publish, then drain
        with Broker(tmp / "mosq") as b:
            url = [["--broker", f"mqtt://127.0.0.1:{b.port}"]]
            log = tmp / "mosq-prime.log"
            p = spawn(["collect", "--db", f"sqlite:///{tmp}/prime.db", "--no-discovery",
                       "--client-id", "bench-mosq", *url[0]], env, log)
            wait_until(lambda: "collecting into" in log.read_text(), timeout=60)
            p.send_signal(signal.SIGTERM)
            p.wait(30)
            pub = publish([b.port], None, None, devices, per, a.procs)
            rows["mosquitto, 1 collector"] = {"published_per_s": pub,
                                              **drain(url, env, tmp, 1, total, "mosq")}
        # --- the cluster
        cl = Cluster(tmp / "cluster")
        try:
            t = time.monotonic()
            cl.up()
            up_s = time.monotonic() - t
            amqp = cl.amqp_url()
            head, hosts = amqp.rsplit("@", 1)
            hosts = hosts.split(",")
            orders = [["--broker", f"{head}@{','.join(hosts[(k + j) % 3] for j in range(3))}"]
                      for k in range(2)]
            ports = [cl.mqtt_port(i) for i in range(3)]
            pw = cl.state["password"]
            for n in (1, 2):
                pub = publish(ports, "edgewatch", pw, devices, per, a.procs, seq0=n * per)
                rows[f"cluster, {n} collector{'s' if n > 1 else ''}"] = {
                    "published_per_s": pub, **drain(orders[:n], env, tmp, n, total, f"cl{n}")}
            # recovery: real boards (firmware, unix port) on the node list, two collectors;
            # the boards' node (also a collector's and the queues' leader) killed with -9;
            # recovery = the longest pause in stored samples' arrival around the kill
            recover = node_loss(cl, orders, env, tmp)
        finally:
            cl.down()
    print(f"messages {total} ({a.devices} devices x {per}), {a.procs} publisher processes, "
          f"{os.cpu_count()} cores; cluster up in {up_s:.0f} s")
    print(f"{'setup':<26} {'PUBACKed msg/s':>15} {'stored msg/s':>13} {'collector CPU s/1000':>21}")
    for name, r in rows.items():
        print(f"{name:<26} {r['published_per_s']:>15.0f} {r['stored_per_s']:>13.0f} "
              f"{r['cpu_s_per_1000']:>21.3f}")
    print(f"node loss (-9 on the boards' node, a collector's node and the queues' leader; "
          f"4 simulated boards at 20 samples/s): longest pause in stored samples {recover:.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "recover_s": recover,
                                            "cluster_up_s": up_s, "messages": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
