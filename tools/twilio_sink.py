"""A local stand-in for Twilio's Messages API that records what the real twilio client sends.

The bridge's tests and benchmark point the real `twilio` Python client at it
(``TWILIO_API_BASE=http://127.0.0.1:<port>``) and read back each request's
To, From and Body. Its behaviour can be switched while it runs, to play an
outage: ``mode = "ok"`` (201 + a message resource), ``"5xx"`` (503), ``"4xx"``
(400, Twilio error 21211), ``"slow"`` (answers after ``delay`` s), or
``stop()``/``start()`` on the same port (connection refused in between).
A recipient listed in ``reject`` always gets a 400, like Twilio's invalid-number
test numbers.

    with TwilioSink(account_sid="AC...", auth_token="...") as sink:
        env["TWILIO_API_BASE"] = sink.url
        ...; sink.requests  # [{"To":..., "From":..., "Body":..., "t": ..., "auth_ok": True}]
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from edgewatch.services.broker import free_port


class TwilioSink:
    """A recording Messages API server on 127.0.0.1; context manager."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-token",
                 port: int | None = None):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.port = port or free_port()
        self.mode, self.delay = "ok", 0.0
        self.reject: set[str] = set()
        self.requests: list[dict] = []  # every POST accepted (status 201)
        self.refused: list[dict] = []  # every POST answered with an error
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.conns: set = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self) -> list[str]:
        with self.lock:
            return [r["Body"] for r in self.requests]

    def _handler(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as api.twilio.com does

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with sink.lock:
                    sink.conns.add(self.connection)

            def finish(self):
                super().finish()
                with sink.lock:
                    sink.conns.discard(self.connection)

            def log_message(self, *args):  # quiet: tests read .requests instead
                pass

            def _reply(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - http.server's naming
                t = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                expected = f"/2010-04-01/Accounts/{sink.account_sid}/Messages.json"
                auth = self.headers.get("Authorization", "")
                want = base64.b64encode(f"{sink.account_sid}:{sink.auth_token}".encode()).decode()
                rec = {"To": form.get("To"), "From": form.get("From"), "Body": form.get("Body"),
                       "path": self.path, "t": t, "auth_ok": auth == f"Basic {want}"}
                mode = sink.mode
                if self.path != expected:
                    status, err = 404, {"code": 20404, "message": "not found", "status": 404}
                elif not rec["auth_ok"]:
                    status, err = 401, {"code": 20003, "message": "Authenticate", "status": 401}
                elif mode == "5xx":
                    status, err = 503, {"code": 20503, "message": "Service unavailable",
                                        "status": 503}
                elif mode == "4xx" or rec["To"] in sink.reject:
                    status, err = 400, {"code": 21211, "status": 400,
                                        "message": f"The 'To' number {rec['To']} is not valid"}
                else:
                    status, err = 201, None
                if mode == "slow":
                    time.sleep(sink.delay)
                with sink.lock:
                    (sink.requests if status == 201 else sink.refused).append(
                        dict(rec, status=status))
                if err:
                    self._reply(status, err)
                    return
                self._reply(201, {"sid": "SM" + uuid.uuid4().hex, "account_sid": sink.account_sid,
                                  "to": rec["To"], "from": rec["From"], "body": rec["Body"],
                                  "status": "queued", "num_segments": "1", "direction":
                                  "outbound-api", "api_version": "2010-04-01"})

        return Handler

    def start(self) -> TwilioSink:
        if self.server is None:
            ThreadingHTTPServer.allow_reuse_address = True
            self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            self.server.daemon_threads = True
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port (clients get connection refused) until start()."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:  # kept-alive connections too: the provider is gone
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> TwilioSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
