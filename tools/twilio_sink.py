"""A local stand-in for Twilio's Messages API that records what the real twilio client sends.

The bridge's tests and benchmark point the real `twilio` Python client at it
(``TWILIO_API_BASE=http://127.0.0.1:<port>``) and read back each request's
To, From and Body. Its behaviour can be switched while it runs, to play an
outage: ``mode = "ok"`` (201 + a message resource), ``"5xx"`` (503), ``"4xx"``
(400, Twilio error 21211), ``"slow"`` (creates the message, answers after
``delay`` s), ``"drop"`` (reads the request and closes the connection without an
answer; nothing created: a provider failing before it creates the message),
``"drop-created"`` (creates the message, then closes without an answer), or
``stop()``/``start()`` on the same port (connection refused in between).
``mode_for`` (a function of the request's record) may choose the mode per request.
A recipient listed in ``reject`` always gets a 400, like Twilio's invalid-number
test numbers.

Created messages are listed by GET .../Messages.json (Twilio's Messages list,
as the twilio client's ``messages.list``/``stream`` call it): filtered by ``To``,
``From``, ``DateSent``, ``DateSent>`` (the ``DateSent>=`` of the docs) and
``DateSent<``, newest first, in pages of ``PageSize`` (default 50) linked by
``next_page_uri``. A message appears there ``list_lag`` s after it was created
(a provider whose list lags behind); ``lookups`` records each list request.

    with TwilioSink(account_sid="AC...", auth_token="...") as sink:
        env["TWILIO_API_BASE"] = sink.url
        ...; sink.requests  # [{"To":..., "From":..., "Body":..., "t": ..., "auth_ok": True}]
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from edgewatch.services.broker import free_port


class TwilioSink:
    """A recording Messages API server on 127.0.0.1; context manager."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-token",
                 port: int | None = None):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.port = port or free_port()
        self.mode, self.delay = "ok", 0.0
        self.mode_for = None  # optional: function(record) -> mode, overriding ``mode``
        self.page_size = 50  # Twilio's default when the client asks for none
        self.list_lag = 0.0  # s between a message's creation and its appearance in the list
        self.reject: set[str] = set()
        self.requests: list[dict] = []  # every message created (answered 201 or not)
        self.lookups: list[dict] = []  # every Messages list request (its query)
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

    def listed(self, query: dict[str, str], now: float | None = None) -> list[dict]:
        """The created messages the Messages list shows for ``query``, newest first."""
        now = time.time() if now is None else now

        def when(value: str) -> float | None:
            for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
                try:
                    return datetime.datetime.strptime(value, fmt).replace(
                        tzinfo=datetime.timezone.utc).timestamp()
                except ValueError:
                    pass
            return None

        after, before = when(query.get("DateSent>", "")), when(query.get("DateSent<", ""))
        day = query.get("DateSent", "")[:10]
        with self.lock:
            out = [r for r in self.requests if r["t"] + self.list_lag <= now
                   and query.get("To", r["To"]) == r["To"]
                   and query.get("From", r["From"]) == r["From"]
                   and (after is None or r["t"] >= after)
                   and (before is None or r["t"] <= before + 86400 * (len(query["DateSent<"]) == 10))
                   and (not day or time.strftime("%Y-%m-%d", time.gmtime(r["t"])) == day)]
        return sorted(out, key=lambda r: -r["t"])

    def _resource(self, r: dict) -> dict:
        date = email.utils.formatdate(r["t"], usegmt=True)
        return {"sid": r["sid"], "account_sid": self.account_sid, "to": r["To"],
                "from": r["From"], "body": r["Body"], "status": "sent", "num_segments": "1",
                "direction": "outbound-api", "api_version": "2010-04-01",
                "date_created": date, "date_updated": date, "date_sent": date,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{r['sid']}.json"}

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
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up waiting (timeout) or was killed
                    self.close_connection = True

            def _auth_ok(self) -> bool:
                auth = self.headers.get("Authorization", "")
                want = base64.b64encode(f"{sink.account_sid}:{sink.auth_token}".encode()).decode()
                return auth == f"Basic {want}"

            def do_GET(self):  # noqa: N802 - the Messages list
                parts = urlsplit(self.path)
                base = f"/2010-04-01/Accounts/{sink.account_sid}/Messages.json"
                if parts.path != base:
                    self._reply(404, {"code": 20404, "message": "not found", "status": 404})
                    return
                if not self._auth_ok():
                    self._reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                with sink.lock:
                    sink.lookups.append(dict(query, t=time.time()))
                if sink.mode == "5xx":
                    self._reply(503, {"code": 20503, "message": "Service unavailable",
                                      "status": 503})
                    return
                size = max(1, min(1000, int(query.get("PageSize") or sink.page_size)))
                page = int(query.get("Page") or 0)
                rows = sink.listed(query)
                chunk = rows[page * size:(page + 1) * size]
                keep = {k: v for k, v in query.items() if k not in ("Page", "PageToken")}

                def uri(p: int) -> str:
                    return base + "?" + urlencode({**keep, "PageSize": size, "Page": p,
                                                   "PageToken": f"PA{p}"})

                more = (page + 1) * size < len(rows)
                self._reply(200, {"messages": [sink._resource(r) for r in chunk],
                                  "page": page, "page_size": size, "start": page * size,
                                  "end": page * size + max(len(chunk) - 1, 0),
                                  "uri": uri(page), "first_page_uri": uri(0),
                                  "previous_page_uri": uri(page - 1) if page else None,
                                  "next_page_uri": uri(page + 1) if more else None})

            def do_POST(self):  # noqa: N802 - http.server's naming
                t = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client died mid-request: nothing is created
                    self.close_connection = True
                    return
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                expected = f"/2010-04-01/Accounts/{sink.account_sid}/Messages.json"
                rec = {"To": form.get("To"), "From": form.get("From"), "Body": form.get("Body"),
                       "path": self.path, "t": t, "auth_ok": self._auth_ok(),
                       "sid": "SM" + uuid.uuid4().hex}
                mode = sink.mode_for(rec) if sink.mode_for else sink.mode
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
                elif mode == "drop":
                    status, err = 0, None  # failed before creating anything
                else:
                    status, err = 201, None
                with sink.lock:
                    (sink.requests if status == 201 else sink.refused).append(
                        dict(rec, status=status))
                if mode in ("drop", "drop-created"):
                    self.close_connection = True
                    try:  # no answer at all: the client sees the connection closed
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if mode == "slow":
                    time.sleep(sink.delay)  # created already: listed while the client waits
                if err:
                    self._reply(status, err)
                    return
                self._reply(201, dict(sink._resource(rec), status="queued", date_sent=None))

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
