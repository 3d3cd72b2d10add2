"""Start or stop a local three-node RabbitMQ cluster: boards on MQTT, services on quorum queues.

    edgewatch cluster up [--dir runs/cluster] [--users devices.txt]   # prints the URLs
    edgewatch cluster status | down
    edgewatch collect --broker "$(edgewatch cluster url amqp)"
    edgewatch sim --broker "$(edgewatch cluster url mqtt)"

Each node is a real ``rabbitmq-server`` (Debian's RabbitMQ 3.10) on loopback ports
of its own, with its own HOME, Erlang cookie, epmd port and a ``RABBITMQ_CONF_ENV_FILE``
of ours, so a system RabbitMQ on 5672/25672 is never touched. The nodes form one
cluster (classic peer discovery), the MQTT plugin listens on every node and keeps
its sessions in quorum queues; the queues the services read are quorum queues
(replicated on the three nodes by Raft) bound to ``amq.topic``:

    <prefix>.collector  <- <prefix>.*.telemetry, <prefix>.*.alert, <prefix>.*.status
    <prefix>.bridge     <- <prefix>.*.alert
    <prefix>.scorer     <- <prefix>.*.telemetry  (one active consumer; at most 100,000 kept)

(the MQTT plugin turns the topic's ``/`` into ``.``). They are declared once the
three nodes have joined and before any board connects: the plugin PUBACKs a
message that matches no binding and drops it. Users mirror the Mosquitto ACL: the
service user (``edgewatch``) may do everything; a device user may publish and
read only ``<prefix>/<its id>/...`` and use only its own MQTT session queue.
The configuration written per node is the one in deploy/rabbitmq/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.core.settings import read_users

RABBIT_LIB = Path("/usr/lib/rabbitmq/lib")
HOST_USER = "edgewatch"
NODES = 3


def rabbit_sbin() -> Path:
    """The package's own sbin folder (not /usr/sbin's wrapper, which switches user)."""
    found = sorted(RABBIT_LIB.glob("rabbitmq_server-*/sbin/rabbitmq-server"))
    if not found:
        raise UserError("RabbitMQ not found: apt-get install rabbitmq-server "
                        "(the cluster needs its package, not a running system node)")
    return found[-1].parent


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(base: int | None = None) -> int:
    """A base port B with B..B+39 and the CLI's B+10000.. ranges free on loopback."""
    import random

    cands = [base] if base else [random.randrange(20000, 40000, 50) for _ in range(50)]
    for b in cands:
        need = list(range(b, b + 40)) + [b + 10000 + i * 10 + j for i in range(NODES)
                                         for j in range(3, 14)]
        if all(_free(p) for p in need):
            return b
    raise UserError(f"no free port range for the cluster{f' at {base}' if base else ''}")


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


# the services' queues and the board messages each is bound to
ROLES = (("collector", ("telemetry", "alert", "status")), ("bridge", ("alert",)),
         ("scorer", ("telemetry",)))
# the scorer keeps each board's recent history in memory: one instance at a time consumes
# its queue (RabbitMQ's single active consumer); a second waits and takes over when the
# first is gone, so a standby scorer never sees half of a board's samples
SINGLE_ACTIVE = ("scorer",)
# Most fleets never run the host scorer (their boards score themselves): its queue keeps at
# most this many samples, dropping the oldest, so an unread queue cannot fill the nodes.
# (drop-head, not reject-publish: a rejection would nack the boards' own publishes.)
BOUNDED = {"scorer": 100_000}


def definitions(prefix: str, host_password: str, devices: dict[str, str]) -> dict:
    """Users, permissions, quorum queues and bindings, in RabbitMQ's definitions format."""
    users = [{"name": HOST_USER, "password_hash": password_hash(host_password),
              "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}]
    perms = [{"user": HOST_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
    topic = [{"user": HOST_USER, "vhost": "/", "exchange": "amq.topic", "write": ".*",
              "read": ".*"}]
    for dev, pw in sorted(devices.items()):
        # its session queue: the client id is the device id plus the suffix of
        # firmware/link.py's client_id (derived from its password)
        own = f"^mqtt-subscription-ew-{dev}(-[0-9a-f]{{16}})?qos[01]$"
        users.append({"name": dev, "password_hash": password_hash(pw),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        perms.append({"user": dev, "vhost": "/", "configure": own,
                      "write": f"^amq\\.topic$|{own}", "read": f"^amq\\.topic$|{own}"})
        mine = f"^({prefix}\\.{dev}\\..*|homeassistant\\.[^.]+\\.{dev}\\..*)$"
        topic.append({"user": dev, "vhost": "/", "exchange": "amq.topic", "write": mine,
                      "read": mine})
    queues, bindings = [], []
    for role, kinds in ROLES:
        q = f"{prefix}.{role}"
        args = {"x-queue-type": "quorum"}
        if role in SINGLE_ACTIVE:
            args["x-single-active-consumer"] = True
        if role in BOUNDED:
            args.update({"x-max-length": BOUNDED[role], "x-overflow": "drop-head"})
        queues.append({"name": q, "vhost": "/", "durable": True, "auto_delete": False,
                       "arguments": args})
        bindings += [{"source": "amq.topic", "vhost": "/", "destination": q,
                      "destination_type": "queue", "routing_key": f"{prefix}.*.{k}",
                      "arguments": {}} for k in kinds]
    return {"users": users, "vhosts": [{"name": "/"}], "permissions": perms,
            "topic_permissions": topic, "queues": queues, "bindings": bindings}


def node_conf(i: int, base: int, names: list[str], folder: Path) -> str:
    """rabbitmq.conf of node i (deploy/rabbitmq/rabbitmq.conf with this machine's ports)."""
    peers = "\n".join(f"cluster_formation.classic_config.nodes.{k + 1} = {n}"
                      for k, n in enumerate(names))
    return f"""\
listeners.tcp.default = 127.0.0.1:{base + i * 10}
mqtt.listeners.tcp.default = 127.0.0.1:{base + i * 10 + 1}
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
mqtt.durable_queue_type = quorum
cluster_formation.peer_discovery_backend = classic_config
{peers}
cluster_partition_handling = pause_minority
loopback_users = none
disk_free_limit.absolute = 50MB
log.file.level = warning
log.console = false
log.dir = {folder / 'log'}
"""


class Cluster:
    """Three RabbitMQ nodes under ``folder``; the state (ports, password) in cluster.json."""

    def __init__(self, folder: str | os.PathLike = "runs/cluster", prefix: str = "edgewatch"):
        self.folder = Path(folder).resolve()
        self.prefix = prefix
        self.state_file = self.folder / "cluster.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    # ------------------------------------------------------------ addresses
    @property
    def base(self) -> int:
        return self.state["base"]

    def names(self) -> list[str]:
        return [f"ew{i + 1}@localhost" for i in range(NODES)]

    def amqp_port(self, i: int) -> int:
        return self.base + i * 10

    def mqtt_port(self, i: int) -> int:
        return self.base + i * 10 + 1

    def amqp_url(self) -> str:
        """The services' --broker: amqp://edgewatch:pw@node1,node2,node3."""
        pw = self.state["password"]
        return f"amqp://{HOST_USER}:{pw}@" + ",".join(
            f"127.0.0.1:{self.amqp_port(i)}" for i in range(NODES))

    def mqtt_url(self) -> str:
        """The boards' broker list: mqtt://node1,mqtt://node2,mqtt://node3."""
        return ",".join(f"mqtt://127.0.0.1:{self.mqtt_port(i)}" for i in range(NODES))

    # ------------------------------------------------------------ processes
    def _env(self, i: int | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(HOME=str(self.folder), ERL_EPMD_PORT=str(self.base + 30),
                   ERL_EPMD_ADDRESS="127.0.0.1",
                   RABBITMQ_CONF_ENV_FILE=str(self.folder / "rabbitmq-env.conf"),
                   LC_ALL="C.UTF-8", LANG="C.UTF-8",
                   # a crashing Erlang VM (rabbitmqctl too) dumps here, not in the caller's folder
                   ERL_CRASH_DUMP=str(self.folder / "erl_crash.dump"))
        if i is not None:
            n = self.folder / f"node{i + 1}"
            env.update(RABBITMQ_NODENAME=self.names()[i],
                       RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                       RABBITMQ_NODE_PORT=str(self.amqp_port(i)),
                       RABBITMQ_DIST_PORT=str(self.base + i * 10 + 2),
                       RABBITMQ_CONFIG_FILE=str(n / "rabbitmq.conf"),
                       RABBITMQ_MNESIA_BASE=str(n / "mnesia"),
                       RABBITMQ_MNESIA_DIR=str(n / "mnesia" / "data"),
                       RABBITMQ_LOG_BASE=str(n / "log"),
                       RABBITMQ_PID_FILE=str(n / "pid"),
                       RABBITMQ_ENABLED_PLUGINS_FILE=str(n / "enabled_plugins"),
                       RABBITMQ_ENABLED_PLUGINS="rabbitmq_mqtt",
                       RABBITMQ_FEATURE_FLAGS_FILE=str(n / "feature_flags"),
                       RABBITMQ_QUORUM_DIR=str(n / "mnesia" / "data" / "quorum"))
        return env

    def ctl(self, i: int, *args: str, timeout: float = 60, check: bool = True) -> str:
        """rabbitmqctl against node i, run from the package's lib folder with our cookie."""
        env = self._env()
        env["RABBITMQ_CTL_DIST_PORT_MIN"] = str(self.base + 10000 + i * 10 + 3)
        env["RABBITMQ_CTL_DIST_PORT_MAX"] = str(self.base + 10000 + i * 10 + 13)
        r = subprocess.run([str(rabbit_sbin() / "rabbitmqctl"), "-n", self.names()[i], *args],
                           env=env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise UserError(f"rabbitmqctl {args[0]} on {self.names()[i]}: "
                            f"{msg[-1] if msg else 'exit ' + str(r.returncode)}")
        return r.stdout

    def start_node(self, i: int) -> int:
        """Start node i in its own process group; its pid."""
        n = self.folder / f"node{i + 1}"
        (n / "log").mkdir(parents=True, exist_ok=True)
        out = open(n / "log" / "console.log", "ab")
        p = subprocess.Popen([str(rabbit_sbin() / "rabbitmq-server")], env=self._env(i),
                             cwd=n, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.state.setdefault("pids", {})[str(i)] = p.pid
        self._save()
        return p.pid

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill node i's whole process group (SIGKILL: as a crashed machine)."""
        pid = self.state.get("pids", {}).get(str(i))
        if pid:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            for _ in range(100):
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
                try:  # reap it if we are its parent
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def running(self, i: int) -> bool:
        pid = self.state.get("pids", {}).get(str(i))
        if not pid:
            return False
        try:
            os.killpg(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def wait_node(self, i: int, timeout: float = 120) -> None:
        """Until node i runs RabbitMQ (await_startup answers once the node is registered)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                self.ctl(i, "await_startup", "--timeout", str(max(1, int(left))),
                         timeout=max(1, left) + 30)
                return
            except (UserError, subprocess.TimeoutExpired) as exc:
                if left <= 0 or not self.running(i):
                    raise UserError(f"node {self.names()[i]} did not start: {exc} "
                                    f"(see {self.folder}/node{i + 1}/log)") from None
                time.sleep(1)

    def running_nodes(self, i: int = 0) -> list[str]:
        out = self.ctl(i, "cluster_status", "--formatter", "json", check=False)
        try:
            return json.loads(out).get("running_nodes", [])
        except ValueError:
            return []

    def _save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=1))

    # ------------------------------------------------------------ lifecycle
    def up(self, devices: dict[str, str] | None = None, base: int | None = None,
           timeout: float = 180) -> Cluster:
        """Write the configuration, start the nodes, wait for the cluster, declare users/queues."""
        if self.state.get("pids") and any(self.running(i) for i in range(NODES)):
            raise UserError(f"{self.folder}: a cluster is already running here "
                            "(edgewatch cluster down first)")
        rabbit_sbin()
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self.state = {"base": pick_ports(base), "prefix": self.prefix,
                      "password": os.environ.get("EDGEWATCH_CLUSTER_PASSWORD")
                      or secrets.token_hex(12), "pids": {}}
        self._save()
        self.state_file.chmod(0o600)
        cookie = self.folder / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        # our own env file: the system one pins the node name (and its interface flags)
        (self.folder / "rabbitmq-env.conf").write_text("# edgewatch cluster: no system overrides\n")
        for i in range(NODES):
            n = self.folder / f"node{i + 1}"
            n.mkdir()
            (n / "rabbitmq.conf").write_text(node_conf(i, self.base, self.names(), n))
            (n / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        deadline = time.monotonic() + timeout
        # one after another: nodes booting together may leave one out of the MQTT
        # plugin's client-id Raft group (its MQTT connections then time out)
        for i in range(NODES):
            self.start_node(i)
            self.wait_node(i, max(10, deadline - time.monotonic()))
        while len(self.running_nodes()) < NODES:
            if time.monotonic() > deadline:
                raise UserError(f"the cluster did not form within {timeout:.0f} s "
                                f"(see {self.folder}/node*/log)")
            time.sleep(1)
        defs = self.folder / "definitions.json"
        defs.write_text(json.dumps(definitions(self.prefix, self.state["password"],
                                               devices or {})))
        defs.chmod(0o600)
        self.ctl(0, "import_definitions", str(defs))
        return self

    def restart_node(self, i: int, timeout: float = 120) -> None:
        """Start a stopped or killed node again; returns once it runs and has rejoined."""
        self.start_node(i)
        self.wait_node(i, timeout)

    def down(self) -> None:
        """Kill every node and this cluster's epmd; the folder (data, logs) stays."""
        for i in range(NODES):
            self.kill_node(i, signal.SIGTERM)
        for i in range(NODES):
            if self.running(i):
                self.kill_node(i, signal.SIGKILL)
        if self.state.get("base"):
            epmd = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob(
                "erts-*/bin/epmd"))), None)
            if epmd:
                subprocess.run([str(epmd), "-port", str(self.base + 30), "-kill"],
                               capture_output=True, timeout=10)
        self.state["pids"] = {}
        if self.state_file.parent.is_dir():
            self._save()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def add_arguments(p) -> None:
    """Options of `edgewatch cluster`."""
    p.add_argument("action", choices=("up", "down", "status", "url", "definitions"),
                   help="up: start 3 nodes; down: stop them; status; url amqp|mqtt; "
                   "definitions: print the queues, users and permissions for "
                   "rabbitmqctl import_definitions (host password from env "
                   "EDGEWATCH_CLUSTER_PASSWORD)")
    p.add_argument("what", nargs="?", choices=("amqp", "mqtt"), help="for url: which one")
    p.add_argument("--dir", default=os.environ.get("EDGEWATCH_CLUSTER_DIR", "runs/cluster"),
                   help="nodes' data, logs and state (env EDGEWATCH_CLUSTER_DIR; "
                   "default runs/cluster)")
    p.add_argument("--users", help="device users: a file of device:password lines (or "
                   "a:pw,b:pw); each may use only its own topics")
    p.add_argument("--prefix", default=os.environ.get("EDGEWATCH_PREFIX", "edgewatch"),
                   help="topic prefix (default edgewatch)")
    p.add_argument("--base-port", type=int, help="first of 40 loopback ports (default: a free range)")


def run(args) -> int:
    c = Cluster(args.dir, args.prefix)
    if args.action == "definitions":
        pw = os.environ.get("EDGEWATCH_CLUSTER_PASSWORD")
        if not pw:
            raise UserError("EDGEWATCH_CLUSTER_PASSWORD is not set: the services' password")
        print(json.dumps(definitions(args.prefix, pw, read_users(args.users)), indent=1))
        return 0
    if args.action == "up":
        if args.base_port is not None and not 1024 <= args.base_port <= 25000:
            raise UserError(f"--base-port {args.base_port}: expected 1024..25000")
        t0 = time.monotonic()
        c.up(read_users(args.users), args.base_port)
        print(f"cluster: {NODES} nodes up in {time.monotonic() - t0:.0f} s ({c.folder})")
        print(f"services: --broker '{c.amqp_url()}'")
        print(f"boards:   MQTT_URL={c.mqtt_url()}")
        return 0
    if not c.state:
        raise UserError(f"{c.folder}: no cluster here (edgewatch cluster up)")
    if args.action == "down":
        c.down()
        print(f"cluster: stopped ({c.folder})")
    elif args.action == "url":
        print(c.mqtt_url() if args.what == "mqtt" else c.amqp_url())
    else:
        up = [i for i in range(NODES) if c.running(i)]
        print(f"cluster: {len(up)}/{NODES} node processes running; "
              f"cluster members running: {', '.join(c.running_nodes(up[0])) if up else '-'}")
    return 0
