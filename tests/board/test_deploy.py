"""`make deploy` and `make repl` against the virtual board, with the real mpremote and ampy; the
deployed firmware then publishes to a real Mosquitto that checks the board's own password and ACL.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from edgewatch.board.virtual_board import Terminal, VirtualBoard
from edgewatch.core.schema import Status, Telemetry
from edgewatch.services.broker import DEVICE_ACL, Broker
from edgewatch.services.mqtt_watch import Watch
from edgewatch.training.export.blob import derive_key

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WIFI_PW = "wifi-Secret-8731"
BOARD_PW = "board-Secret-5519"
HOST_PW = "host-Secret-2204"
OTA_KEY = "ab" * 32


def make(*args, env=None, timeout=300):
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def write_env(path: Path, port: int, device: str) -> Path:
    path.write_text(f"WIFI_SSID=greenhouse\nWIFI_PASSWORD={WIFI_PW}\n"
                    f"MQTT_URL=mqtt://127.0.0.1:{port}\nMQTT_USER={device}\n"
                    f"MQTT_PASSWORD={BOARD_PW}\nOTA_KEY={OTA_KEY}\n")
    return path


@pytest.fixture
def broker(tmp_path):
    users = {"edgewatch": HOST_PW, "vb-01": BOARD_PW, "vb-02": BOARD_PW}
    with Broker(tmp_path / "broker", users=users, acl=DEVICE_ACL) as b:
        yield b


def test_make_deploy_repl_and_the_firmware_publishes(tmp_path, tiny_model_dir, broker):
    env_file = write_env(tmp_path / ".env", broker.port, "vb-01")
    with VirtualBoard(tmp_path / "flash", board="esp32-devkitc-dht22") as vb:
        flash = vb.flash
        (flash / "app.py").write_text("raise SystemExit  # an old source twin: must go\n")
        # a model received over the air, its reset cut short: signed for this board, newer,
        # another model; the deployed model must be the one that runs, not this one
        from edgewatch.training.export.blob import read, sign, write

        spec = read((tiny_model_dir / "model.ewb").read_bytes())
        deployed_id = spec.model_id
        spec.model_id = f"{int(spec.model_id, 16) ^ 0xFFFFFFFF:08x}"
        (flash / "model.new").write_bytes(sign(write(spec), derive_key(bytes.fromhex(OTA_KEY), "vb-01"), 10))
        (flash / "model.err").write_text("1 2 0011223344556677 model: an old refusal")
        watch = Watch(broker.port, "edgewatch/vb-01/#", "edgewatch", HOST_PW)
        r = make("deploy", f"PORT={vb.port}", "UMQTT_FROM=build/mplib", f"MODEL={tiny_model_dir}",
                 f"DEPLOY_ARGS=--env-file {env_file} --device-id vb-01 --set period_ms=500")
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        for secret in (WIFI_PW, BOARD_PW, OTA_KEY):
            assert secret not in out  # never printed
        # one progress line per file, as each is copied (a serial link takes a while)
        copied = re.findall(r"deploy: \[(\d+)/(\d+)\] (\S+) \(", out)
        assert copied and [int(i) for i, _, _ in copied] == list(range(1, len(copied) + 1))
        assert int(copied[-1][1]) == len(copied) and "main.py" in {n for _, _, n in copied}
        # what the board holds: main.py as source, the rest precompiled for its arch
        assert (flash / "main.py").read_text() == (ROOT / "firmware" / "main.py").read_text()
        assert not (flash / "app.py").exists()
        for mod in ("app", "engine", "config", "link", "outbox", "detector", "kernels"):
            assert (flash / f"{mod}.mpy").read_bytes()[:2] == b"M\x06", mod
        # the viper kernels are native code: built for the board's own arch (x64 here)
        assert (flash / "kernels.mpy").read_bytes()[2] >> 2 == 2
        assert (flash / "lib" / "umqtt" / "simple.mpy").is_file()
        assert (flash / "model.ewb").read_bytes() == (tiny_model_dir / "model.ewb").read_bytes()
        cfg = json.loads((flash / "config.json").read_text())
        assert cfg["device"] == "vb-01" and cfg["board"] == "esp32-devkitc-dht22"
        assert cfg["wifi"] == {"ssid": "greenhouse", "password": WIFI_PW}
        # the board's own OTA key, derived from the fleet master key: never the master itself
        assert (cfg["user"], cfg["password"]) == ("vb-01", BOARD_PW)
        assert cfg["ota_key"] == derive_key(bytes.fromhex(OTA_KEY), "vb-01").hex() != OTA_KEY
        assert cfg["ota_key_version"] == 1
        assert cfg["period_ms"] == 500
        assert json.loads((flash / "board.json").read_text())["pins"]["dht"] == 4

        # the reset started the firmware: telemetry reaches the broker with the board's password
        tel = watch.wait_for(Telemetry, 3)
        assert [t.seq for t in tel[:3]] == [0, 1, 2]
        status = watch.wait_for(Status)[0]
        assert status.state == "online" and status.fw
        assert status.model == deployed_id and not status.error, status
        assert not (flash / "model.new").exists() and not (flash / "model.err").exists()
        assert not watch.bad, watch.bad

        # make repl: interrupt the firmware, look around, soft-reset it and read what it prints
        t = Terminal(["make", "-s", "repl", f"PORT={vb.port}"], cwd=str(ROOT))
        try:
            t.expect(b"to exit this shell\r\n")
            t.wait_raw()
            t.send(b"\x03")
            assert b"KeyboardInterrupt" in t.expect(b">>> ", timeout=15)
            # keys mpremote sent while the firmware ran are served first, as by a real UART:
            # sync on our own output before reading answers
            t.send(b"print('rea' + 'dy')\r")
            t.expect(b"ready\r\n")
            t.expect(b">>> ")
            t.send(b"import os; print(sorted(os.listdir()))\r")
            listing = t.expect(b">>> ")
            assert b"'app.mpy'" in listing and b"'model.ewb'" in listing and b"'main.py'" in listing
            t.send(b"import config; c = config.load(); print(c['device'], c['host'], c['period_ms'])\r")
            assert b"vb-01 127.0.0.1 500" in t.expect(b">>> ")
            t.send(b"\x04")  # soft reboot: main.py runs the firmware again, its log shows here
            boot = t.expect(b"link: mqtt connected", timeout=30)
            assert b"MPY: soft reboot" in boot and b"app: vb-01" in boot
            t.send(b"\x03")
            t.expect(b">>> ", timeout=15)
            t.send(b"\x1d")
            assert t.close() == 0
        finally:
            if t.proc.poll() is None:
                t.close(0)
        # files listed by mpremote itself
        ls = subprocess.run([str(BIN / "mpremote"), "connect", vb.port, "fs", "ls"],
                            capture_output=True, text=True, timeout=60).stdout
        assert "config.json" in ls and "lib/" in ls
        watch.close()


def test_ampy_deploy_runs_the_same_firmware(tmp_path, tiny_model_dir, broker):
    env_file = _env_with(write_env(tmp_path / ".env", broker.port, "vb-02"), "DEVICE_ID=vb-02")
    with VirtualBoard(tmp_path / "flash", board="esp32-devkitc-dht22") as vb:
        watch = Watch(broker.port, "edgewatch/vb-02/#", "edgewatch", HOST_PW)
        r = make("deploy", f"PORT={vb.port}", "AMPY=1", f"MODEL={tiny_model_dir}",
                 f"DEPLOY_ARGS=--env-file {env_file} --set period_ms=500")  # DEVICE_ID in .env
        assert r.returncode == 0, r.stdout + r.stderr
        assert "with ampy" in r.stdout
        assert (vb.flash / "app.mpy").is_file() and (vb.flash / "lib/umqtt/simple.mpy").is_file()
        assert watch.wait_for(Telemetry, 2)[0].device == "vb-02"
        watch.close()


def _env_with(env: Path, line: str) -> Path:
    """A copy of ``env`` with one KEY=VALUE line replaced (or added)."""
    key = line.split("=", 1)[0]
    lines = [ln for ln in env.read_text().splitlines() if not ln.startswith(key + "=")]
    out = env.with_name(f"{key.lower()}-{abs(hash(line))}.env")
    out.write_text("\n".join([*lines, line]) + "\n")
    return out


def test_bad_inputs_are_one_line_and_nothing_is_sent(tmp_path, tiny_model_dir):
    ew = str(BIN / "edgewatch")
    good_env = write_env(tmp_path / ".env", 1883, "vb-01")
    (tmp_path / "nourl.env").write_text("WIFI_SSID=x\n")
    with VirtualBoard(tmp_path / "flash") as vb:
        base = ["deploy", "--port", vb.port, "--model", str(tiny_model_dir)]
        cases = [
            (["deploy", "--port", "", "--env-file", str(good_env)], "no serial port given"),
            (["deploy", "--port", "/dev/edgewatch-none", "--env-file", str(good_env)],
             "/dev/edgewatch-none does not exist"),
            (base + ["--board", "esp32-nonesuch", "--env-file", str(good_env)], "esp32-nonesuch"),
            (["deploy", "--port", vb.port, "--model", str(tmp_path), "--env-file", str(good_env)],
             "no model blob"),
            (base + ["--env-file", str(tmp_path / "nourl.env")], "MQTT_URL is not set"),
            (base + ["--env-file", str(tmp_path / "missing.env")], "no such env file"),
            (base + ["--env-file", str(good_env), "--device-id", "bad/id"], "device id 'bad/id'"),
            (base + ["--env-file", str(good_env), "--device-id", "ew-collector-1"],
             "device id 'ew-collector-1': ids starting with 'ew-'"),
            (base + ["--env-file", str(good_env), "--umqtt-from", str(tmp_path)], "--umqtt-from"),
            (base + ["--env-file", str(good_env), "--ampy"], "ampy cannot install packages"),
            (base + ["--env-file", str(good_env), "--set", "novalue"], "expected KEY=VALUE"),
            # what the firmware itself would refuse at boot is caught here, before the board
            (base + ["--env-file", str(_env_with(good_env, "MQTT_URL=htp://127.0.0.1:1883"))],
             "MQTT_URL (config.json broker): 'htp://127.0.0.1:1883' is not an mqtt://"),
            (base + ["--env-file", str(_env_with(good_env, "MQTT_URL=mqtt://127.0.0.1:99999"))],
             "MQTT_URL (config.json broker): bad port"),
            (base + ["--env-file", str(_env_with(good_env, "OTA_KEY=xyz"))],
             "OTA_KEY: expected at least 32 hex digits"),
            (base + ["--env-file", str(good_env), "--set", "period_ms=5"],
             "config.json period_ms: expected an integer in 10..86400000, got 5"),
            (base + ["--env-file", str(_env_with(good_env, "DEVICE_ID=bad/id"))],
             "device id 'bad/id'"),
        ]
        for args, needle in cases:
            r = subprocess.run([ew, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
        r = make("deploy", "PORT=")
        assert r.returncode != 0 and "no serial port given" in r.stderr
        r = make("repl", "PORT=/dev/edgewatch-none")
        assert r.returncode != 0 and "/dev/edgewatch-none does not exist" in r.stderr
        assert vb.received == 0
        assert list(vb.flash.iterdir()) == []


def test_a_path_that_is_not_a_serial_port_is_one_line(tmp_path):
    """/dev/null, a file, a folder or a port we may not open: one line, exit 2, before mpremote
    or esptool see it (mpremote said "failed to access /dev/null" and exited 1; esptool printed
    its own lines first). A pty, which is what a board's port is, is still accepted."""
    import os

    from edgewatch.board.deploy import check_port
    from edgewatch.core.errors import UserError
    from hostkit import edgewatch, one_line_error

    (tmp_path / "notes.txt").write_text("not a port\n")
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\xe9" + bytes(4095))
    master, slave = os.openpty()
    try:
        pty = os.ttyname(slave)
        assert check_port(pty, "repl") == pty
        cases = [("/dev/null", "/dev/null is not a serial port (a device that is not a terminal)"),
                 (str(tmp_path / "notes.txt"), "notes.txt is not a serial port (a regular file)"),
                 (str(tmp_path), f"{tmp_path} is not a serial port (a folder)"),
                 ("/dev/edgewatch-none", "/dev/edgewatch-none does not exist")]
        for port, needle in cases:
            for cmd, *rest in (["repl"], ["deploy", "--no-model"],
                               ["flash", "--firmware", str(fw), "--no-deploy"]):
                r = subprocess.run(edgewatch(cmd, "--port", port, *rest),
                                   capture_output=True, text=True, timeout=60, cwd=tmp_path)
                one_line_error(r, cmd, needle)
        # a port we may not open: as root (CI), checked in a child that has dropped to the
        # user nobody (a subprocess as nobody could not import edgewatch from a checkout in
        # a private folder, as a CI clone under mktemp -d is)
        os.chmod(pty, 0)  # only root could open it now: as anyone else, no permission
        if os.geteuid() == 0:
            pid = os.fork()
            if pid == 0:  # the child: only os._exit leaves it
                code = 5
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    check_port(pty, "repl")
                    code = 4
                except UserError as e:
                    code = 3 if f"no permission to open {pty}" in str(e) else 6
                except BaseException:
                    pass
                os._exit(code)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
        else:
            for cmd, *rest in (["repl"], ["deploy", "--no-model"],
                               ["flash", "--firmware", str(fw), "--no-deploy"]):
                r = subprocess.run(edgewatch(cmd, "--port", pty, *rest),
                                   capture_output=True, text=True, timeout=60, cwd=tmp_path)
                one_line_error(r, cmd, f"no permission to open {pty}")
    finally:
        os.close(slave)
        os.close(master)


def test_a_refused_secret_is_never_echoed(tmp_path):
    """A config the firmware refuses names the key, never the secret value."""
    ew = str(BIN / "edgewatch")
    good_env = write_env(tmp_path / ".env", 1883, "vb-01")
    with VirtualBoard(tmp_path / "flash") as vb:
        base = ["deploy", "--port", vb.port, "--no-model", "--env-file"]
        cases = [
            (base + [str(good_env), "--set", "password=87654321"], "87654321",
             "MQTT_PASSWORD (config.json password): expected a non-empty string"),
            (base + [str(good_env), "--set", "password:87654321"], "87654321",
             "--set password...: expected KEY=VALUE"),
            (base + [str(_env_with(good_env, "MQTT_URL=htp://bob:S3CRETURLPW@127.0.0.1:1883"))],
             "S3CRETURLPW", "'htp://bob:***@127.0.0.1:1883' is not an mqtt://"),
            # the board took bob:...@127.0.0.1 for a host name and never connected
            (base + [str(_env_with(good_env, "MQTT_URL=mqtt://bob:S3CRETURLPW@127.0.0.1:1883"))],
             "S3CRETURLPW", "MQTT_URL: a user or password in the URL is not read by the board"),
        ]
        for args, secret, needle in cases:
            r = subprocess.run([ew, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
            assert secret not in r.stdout + r.stderr
        assert vb.received == 0


def test_a_damaged_model_blob_is_refused_before_the_board(tmp_path):
    """model_blob parses the blob (flash --dry-run, deploy and sim "check everything first"):
    a damaged or foreign file is one line naming it; the reference blob passes."""
    from edgewatch.board.deploy import model_blob
    from edgewatch.core.errors import UserError

    good = ROOT / "tests" / "golden" / "model.ewb"
    assert model_blob(str(good)) == good
    raw = good.read_bytes()
    (tmp_path / "cut.ewb").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "flip.ewb").write_bytes(raw[:40] + bytes([raw[40] ^ 0xFF]) + raw[41:])
    (tmp_path / "text.ewb").write_text("not a blob\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "model.ewb").write_bytes(b"")
    for bad in ("cut.ewb", "flip.ewb", "text.ewb", "dir"):
        with pytest.raises(UserError, match="not a valid model blob") as exc:
            model_blob(str(tmp_path / bad))
        assert str(tmp_path / bad) in str(exc.value) and "\n" not in str(exc.value)


def test_the_c_kernels_ship_to_rv32imc_boards_only(tmp_path, rv32):
    """ewkern.mpy (firmware/native/ewkern.c) goes to a board whose sys.implementation._mpy
    is rv32imc with the natmod's .mpy version and sub-version (the QEMU RV32 build's is),
    never to another architecture (the ESP32's xtensawin, the unix port's x64)."""
    from edgewatch.board import deploy
    from edgewatch.board.rv32 import NATMOD_MPY_VERSION

    info = int(rv32.run("import sys\nprint(sys.implementation._mpy)"))
    assert deploy.arch_of(info)[0] == "rv32imc" and deploy.native_fits(info)
    assert not deploy.native_fits((10 << 10) | (3 << 8) | 6)  # xtensawin (ESP32)
    assert not deploy.native_fits((2 << 10) | (3 << 8) | 6)  # x64 (the unix port)
    assert not deploy.native_fits((11 << 10) | (2 << 8) | 6)  # rv32imc, another ABI
    said = []
    assert deploy.stage_native(tmp_path, said.append) == ["ewkern.mpy"] and not said
    head = (tmp_path / "ewkern.mpy").read_bytes()[:3]
    assert (head[1], head[2] & 3, head[2] >> 2) == (*NATMOD_MPY_VERSION, 11)


def test_a_deployed_model_removes_an_ota_model_not_loaded_yet(tmp_path, monkeypatch):
    """model.new (a model received over the air, its reset cut short) would be loaded at boot
    over the model deployed (firmware/otaboot.py): deploying a model removes it and
    model.err; deploying without one leaves them (no model of the user's to protect)."""
    from edgewatch.board import deploy

    seen = []

    class Tool:
        name = "fake"

        def __init__(self, port):
            pass

        def mpy_info(self):
            return 2 << 10 | 6  # x64, .mpy version 6

        def copy(self, folder, files, stale, say=None):
            seen.append((files, stale))

    monkeypatch.setattr(deploy, "check_port", lambda port, what="deploy": port)
    monkeypatch.setattr(deploy, "Mpremote", Tool)
    env = write_env(tmp_path / ".env", 1883, "vb-01")
    for model in (ROOT / "tests" / "golden" / "model.ewb", None):
        deploy.deploy("fake", "esp32-devkitc-dht22", str(model) if model else None, "vb-01",
                      str(env), str(ROOT / "build" / "mplib"), reset=False, say=lambda s: None)
    (with_model, stale), (without, stale_none) = seen
    assert "model.ewb" in with_model and {"model.new", "model.err"} <= set(stale)
    assert "model.ewb" not in without and not {"model.new", "model.err"} & set(stale_none)
