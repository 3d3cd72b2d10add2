"""Start a private Mosquitto broker on a free loopback port with a generated config.

Used by the tests, the demo and the simulated fleet, so none of them depends on
a broker already running. Options cover what the tests need: password auth, an
ACL, a TLS listener (CA, server cert and an optional client cert generated on the
fly), and stop/start of the same broker on the same port to simulate an outage.

    with Broker(tmp_path, users={"dev1": "pw"}, acl=DEVICE_ACL, tls=True) as b:
        b.port, b.tls_port, b.ca_file, b.client_cert("dev1")
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

# A device may publish and read only under its own id; the host user "edgewatch"
# (bridge, collector, tools) may do everything. %u is the MQTT username.
DEVICE_ACL = """\
user edgewatch
topic readwrite #

pattern readwrite edgewatch/%u/#
pattern readwrite homeassistant/+/%u/#
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError("mosquitto not found: `make setup` installs it (apt-get install mosquitto)")


def _make_tls(folder: Path, clients: list[str]) -> dict[str, Path]:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and client certs."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    later = now + _dt.timedelta(days=30)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()))

    def write_cert(c, path):
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgewatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": folder / "ca.crt"}
    write_cert(ca, out["ca"])

    def issue(cn: str, server: bool):
        k = key()
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(k.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(later))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    k, c = issue("localhost", True)
    out["server_key"], out["server_cert"] = folder / "server.key", folder / "server.crt"
    write_key(k, out["server_key"])
    write_cert(c, out["server_cert"])
    for name in clients:
        k, c = issue(name, False)
        out[f"client_key:{name}"] = folder / f"client-{name}.key"
        out[f"client_cert:{name}"] = folder / f"client-{name}.crt"
        write_key(k, out[f"client_key:{name}"])
        write_cert(c, out[f"client_cert:{name}"])
    return out


class Broker:
    """A Mosquitto process owned by the caller. Context manager; `stop()`/`start()` keep the port."""

    def __init__(self, folder, users: dict[str, str] | None = None, acl: str | None = None,
                 tls: bool = False, require_client_cert: bool = False,
                 tls_clients: list[str] | None = None, port: int | None = None,
                 persistence: bool = False, extra: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls_port = free_port() if tls else None
        self.users = dict(users or {})
        self.proc: subprocess.Popen | None = None
        self.log_file = self.folder / "mosquitto.log"
        self.tls_files = _make_tls(self.folder, list(tls_clients or [])) if tls else {}
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.users:
            pw = self.folder / "passwd"
            pw.write_text("")
            for u, p in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (self.folder / "acl").write_text(acl)
            (self.folder / "acl").chmod(0o600)
            lines.append(f"acl_file {self.folder / 'acl'}")
        if tls:
            lines += [f"listener {self.tls_port} 127.0.0.1",
                      f"cafile {self.tls_files['ca']}",
                      f"certfile {self.tls_files['server_cert']}",
                      f"keyfile {self.tls_files['server_key']}",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        if os.geteuid() == 0:
            # as root, mosquitto drops to user "mosquitto", who cannot read a 0700 test folder
            lines.append("user root")
        lines += ["per_listener_settings false", "max_queued_messages 100000",
                  "max_inflight_messages 0"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.folder}/"]
        lines += [f"log_dest file {self.log_file}", "log_type error", "log_type warning",
                  "log_type notice", "log_type information", extra]
        # per_listener_settings must come before any listener in mosquitto 2
        head = [ln for ln in lines if ln.startswith("per_listener_settings")]
        rest = [ln for ln in lines if not ln.startswith("per_listener_settings")]
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(head + rest) + "\n")
        os.chmod(self.folder, 0o755)

    @property
    def ca_file(self) -> str | None:
        return str(self.tls_files["ca"]) if self.tls_files else None

    def client_cert(self, name: str) -> tuple[str, str]:
        """(certfile, keyfile) of a client certificate generated for `name`."""
        return (str(self.tls_files[f"client_cert:{name}"]), str(self.tls_files[f"client_key:{name}"]))

    def start(self, timeout: float = 10.0) -> Broker:
        if self.proc and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.tls_port) if p]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err.strip()} {log[-800:]}")
            if all(_listening(p) for p in ports):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {ports} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
