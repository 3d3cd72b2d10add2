"""The firmware's reconnect backoff grows (issue 14 item 7, "Broke" 8): measured on the host as
the times a real board (MicroPython unix port) opens a TCP connection to a broker that refuses
it (CONNACK 5, not authorised), not as the board reports them. A backoff that never grows
(a deliberate bug once survived the suite) fails here."""

from __future__ import annotations

import socket
import threading
import time

from edgewatch.board import fwrun
from hostkit import wait_until

from tests.firmware.test_firmware_e2e import BOARD, sim, test_config

MIN_MS, MAX_MS = 100, 1600
ATTEMPTS = 9  # 100, 200, 400, 800, 1600 ms (each jittered into [d/2, d]), then the cap


class RefusingBroker:
    """Accepts each TCP connection, answers the MQTT CONNECT with CONNACK 5, closes; notes when."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.times: list[float] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.times.append(time.monotonic())
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(1024)
                    conn.sendall(b"\x20\x02\x00\x05")  # CONNACK: refused, not authorised
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_reconnect_delays_grow_to_the_cap_with_jitter(tmp_path):
    broker = RefusingBroker()
    flash = fwrun.prepare(tmp_path / "b", "bo-1", BOARD, f"mqtt://127.0.0.1:{broker.port}",
                          sim=sim([]), **test_config(stop_after=100_000,
                                                     backoff={"min_ms": MIN_MS,
                                                              "max_ms": MAX_MS}))
    proc = fwrun.start(flash, BOARD)
    try:
        wait_until(lambda: len(broker.times) >= ATTEMPTS or proc.poll() is not None, 40,
                   what=f"{ATTEMPTS} connection attempts")
        assert proc.poll() is None, fwrun.console(flash)[-2000:]
    finally:
        proc.kill()
        proc.wait(10)
        broker.close()
    t = broker.times[:ATTEMPTS]
    gaps = [round((b - a) * 1000) for a, b in zip(t, t[1:], strict=False)]
    # the n-th pause is drawn from [d/2, d], d = MIN_MS * 2^n capped at MAX_MS; the board's loop
    # (40 ms samples) and a loaded machine add a little on top, never take any off
    for n, g in enumerate(gaps):
        d = min(MAX_MS, MIN_MS << n)
        assert d // 2 - 5 <= g <= d + 400, (n, gaps)
    assert gaps[-1] >= 4 * gaps[0] and min(gaps[-3:]) >= MAX_MS // 2 - 5, gaps  # it grew
    assert len(set(gaps[-4:])) > 1, gaps  # jittered: boards do not retry in lockstep
    print("measured reconnect delays (ms):", gaps)
