"""Webhook and e-mail notifiers against real local servers (http.server, aiosmtpd); the bridge routes to both."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from edgewatch.core.errors import UserError
from edgewatch.core.settings import MqttSettings
from edgewatch.services.bridge import Bridge, Outbox
from edgewatch.services.broker import Broker, free_port
from edgewatch.services.notifiers import (
    DryRunSMS,
    Email,
    Message,
    PermanentError,
    TransientError,
    Webhook,
    from_env,
)
from hostkit import HOST_PW, Board, alert, wait_until


class Hook:
    """A webhook receiver that records JSON bodies and answers with ``status``."""

    def __init__(self):
        self.status, self.got, self.keys = 200, [], []
        hook = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.got.append((json.loads(body), self.headers.get("Authorization")))
                hook.keys.append(self.headers.get("Idempotency-Key"))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd handler: keeps messages; can refuse a recipient or defer DATA."""

    def __init__(self):
        self.messages, self.refuse, self.defer = [], set(), False

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.defer:
            return "451 4.3.0 try again later"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              envelope.content.decode(), session.authenticated))
        return "250 Message accepted"


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def smtp():
    box = Mailbox()

    def auth(server, session, envelope, mechanism, data):
        return AuthResult(success=(data.login, data.password) == (b"ew", b"smtp-pw-123"),
                          handled=False)

    c = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=auth,
                   auth_require_tls=False)
    c.start()
    box.port = c.port
    yield box
    c.stop()


MSG = Message("edgewatch gh-01", "edgewatch gh-01: temperature 35.2 outside 21.1..21.7 (band)",
              {"kind": "alert", "device": "gh-01", "seq": 7, "rule": "band"})


def test_webhook_posts_json_and_classifies_failures(hook):
    w = Webhook(hook.url, token="hook-token-xyz", timeout=2)
    w.send(None, MSG)
    body, auth = hook.got[0]
    assert body["text"] == MSG.body and body["device"] == "gh-01" and body["seq"] == 7
    assert auth == "Bearer hook-token-xyz"
    hook.status = 503
    with pytest.raises(TransientError, match="HTTP 503"):
        w.send(None, MSG)
    hook.status = 429
    with pytest.raises(TransientError, match="HTTP 429"):
        w.send(None, MSG)
    hook.status = 404
    with pytest.raises(PermanentError, match="HTTP 404"):
        w.send(None, MSG)
    hook.close()
    with pytest.raises(TransientError, match="ConnectionError"):
        w.send(None, MSG)


def test_email_through_a_real_smtp_server(smtp):
    e = Email("127.0.0.1", smtp.port, "edgewatch@example.org", ["ops@example.org"], user="ew",
              password="smtp-pw-123", security="none", timeout=5)
    e.send("ops@example.org", MSG)
    frm, rcpt, content, authed = smtp.messages[0]
    assert (frm, rcpt, authed) == ("edgewatch@example.org", ["ops@example.org"], True)
    assert "Subject: edgewatch gh-01" in content and MSG.body in content
    smtp.defer = True
    with pytest.raises(TransientError, match="451"):
        e.send("ops@example.org", MSG)
    smtp.defer = False
    smtp.refuse.add("gone@example.org")
    with pytest.raises(PermanentError, match="gone@example.org"):
        e.send("gone@example.org", MSG)
    bad = Email("127.0.0.1", smtp.port, "edgewatch@example.org", ["ops@example.org"], user="ew",
                password="wrong-password", security="none", timeout=5)
    with pytest.raises(PermanentError, match="535"):
        bad.send("ops@example.org", MSG)


def test_bridge_routes_one_alert_to_webhook_and_email(tmp_path, hook, smtp):
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}) as broker:
        notifiers = [Webhook(hook.url), Email("127.0.0.1", smtp.port, "ew@example.org",
                                              ["a@example.org", "b@example.org"],
                                              security="none")]
        b = Bridge(Outbox(tmp_path / "o.db", cooldown=0, max_per_minute=0), notifiers,
                   MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW)).start()
        dev = Board(broker, "edgewatch", HOST_PW)
        try:
            dev.publish("alert", alert("gh-01", 3), device="gh-01")
            wait_until(lambda: len(hook.got) == 1 and len(smtp.messages) == 2, what="deliveries")
            assert hook.got[0][0]["kind"] == "alert" and hook.got[0][0]["seq"] == 3
            assert sorted(m[1][0] for m in smtp.messages) == ["a@example.org", "b@example.org"]
            wait_until(lambda: b.outbox.counts() == {"sent": 3}, what="rows marked sent")
        finally:
            dev.close()
            b.stop()


def test_from_env(monkeypatch):
    for k in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM", "SMTP_HOST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TWILIO_TO", "+15551230001,+15551230002")
    (sms,) = from_env(["sms"])
    assert isinstance(sms, DryRunSMS) and sms.recipients == ["+15551230001", "+15551230002"]
    with pytest.raises(UserError, match="SMTP_HOST"):
        from_env(["email"])
    monkeypatch.delenv("EDGEWATCH_WEBHOOK_URL", raising=False)
    with pytest.raises(UserError, match="EDGEWATCH_WEBHOOK_URL"):
        from_env(["webhook"])
    with pytest.raises(UserError, match="named twice"):
        from_env(["console", "console"])


def test_webhook_attempts_of_one_alert_carry_one_idempotency_key(tmp_path, hook):
    """A receiver can drop a repeated request (its answer lost): every attempt, same key."""
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}) as broker:
        b = Bridge(Outbox(tmp_path / "o.db", cooldown=0, max_per_minute=0), [Webhook(hook.url)],
                   MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW),
                   retry_base=0.1, retry_cap=0.3).start()
        dev = Board(broker, "edgewatch", HOST_PW)
        try:
            hook.status = 503
            for seq in (3, 4):
                dev.publish("alert", alert("gh-01", seq), device="gh-01")
            wait_until(lambda: len(hook.got) >= 6, what="three attempts of each alert")
            hook.status = 200
            wait_until(lambda: b.outbox.counts() == {"sent": 2}, what="both sent")
            keys: dict[int, set] = {}
            for (body, _), key in zip(hook.got, hook.keys, strict=True):
                keys.setdefault(body["seq"], set()).add(key)
            assert len(keys[3]) == len(keys[4]) == 1, keys
            assert keys[3] != keys[4] and all(len(k) == 32 for (k,) in keys.values())
        finally:
            dev.close()
            b.stop()


def test_webhook_url_secrets_stay_out_of_errors_logs_and_the_outbox(tmp_path, hook, caplog,
                                                                    monkeypatch):
    """A webhook URL carries its token in the path or query (Slack: /services/T/B/<token>):
    errors, log lines and the outbox's last_error show scheme://host:port only."""
    import logging
    import sqlite3

    from edgewatch.core.settings import redact, url_origin

    port = hook.server.server_address[1]
    url = f"http://u:PW5ecret@127.0.0.1:{port}/services/T0/B0/S3CRETTOKEN?key=S3CRETQ"
    assert url_origin(url) == f"http://127.0.0.1:{port}"
    assert url_origin("https://[::1]/x?y=z") == "https://[::1]"
    monkeypatch.setenv("EDGEWATCH_WEBHOOK_URL", url)  # as the bridge gets it
    assert "S3CRET" not in redact(f"POST {url}") and "PW5ecret" not in redact(url)
    hook.status = 503
    with pytest.raises(TransientError) as exc:
        Webhook(url, timeout=2).send(None, MSG)
    assert str(exc.value) == f"webhook http://127.0.0.1:{port}: HTTP 503"
    caplog.set_level(logging.DEBUG)
    with Broker(tmp_path / "mq", users={"edgewatch": HOST_PW}) as broker:
        b = Bridge(Outbox(tmp_path / "o.db", cooldown=0, max_per_minute=0),
                   [Webhook(url, timeout=2)],
                   MqttSettings(port=broker.port, username="edgewatch", password=HOST_PW),
                   retry_base=0.1, retry_cap=0.2).start()
        dev = Board(broker, "edgewatch", HOST_PW)
        try:
            dev.publish("alert", alert("gh-01", 3), device="gh-01")
            wait_until(lambda: len(hook.got) >= 3, what="three attempts")
        finally:
            dev.close()
            b.stop()
    with sqlite3.connect(tmp_path / "o.db") as db:
        (err,) = db.execute("SELECT last_error FROM outbox").fetchone()
    assert err == f"webhook http://127.0.0.1:{port}: HTTP 503"
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries and all(f"webhook http://127.0.0.1:{port}: HTTP 503" in m for m in retries)
    shown = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("edgewatch"))
    assert "S3CRET" not in shown and "PW5ecret" not in shown


def test_short_webhook_paths_are_not_masked_in_every_log_line():
    from edgewatch.core.settings import url_secrets

    assert url_secrets("https://hooks.example.org/alert") == set()  # topics end in /alert
    assert "S3CRETTOKEN" in url_secrets("https://h/services/T0/B0/S3CRETTOKEN")
    assert url_secrets("http://u:PW5ecret@h/x?key=abcd") == {"PW5ecret", "key=abcd"}
