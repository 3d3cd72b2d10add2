"""Where alerts go: Twilio SMS (or a dry run of it), console, webhook, e-mail.

A notifier sends one :class:`Message` to one recipient and tells the bridge's
outbox what to do when that fails: :class:`TransientError` (HTTP 5xx or 429,
timeouts, connection refused, SMTP 4xx) is retried with backoff,
:class:`PermanentError` (any other 4xx, SMTP 5xx, a bad number) goes to the
dead-letter state with one clear log line.

Settings come from the environment or `.env` (host/core/settings.py):

- SMS: ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, ``TWILIO_FROM``,
  ``TWILIO_TO`` (comma-separated); ``TWILIO_API_BASE`` points the real twilio
  client at another Messages API endpoint (a proxy, or a local test server).
  Without SID/token/from/to, SMS runs as a dry run that prints what it would send.
- Webhook: ``EDGEWATCH_WEBHOOK_URL``, optional ``EDGEWATCH_WEBHOOK_TOKEN`` (Bearer).
- E-mail: ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER``, ``SMTP_PASSWORD``,
  ``SMTP_FROM``, ``SMTP_TO`` (comma-separated), ``SMTP_SECURITY`` (starttls, ssl, none).
"""

from __future__ import annotations

import json
import logging
import smtplib
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage

from edgewatch.core.errors import UserError
from edgewatch.core.settings import add_secret, env, safe_url

log = logging.getLogger("edgewatch.notify")
NAMES = ("sms", "console", "webhook", "email")


class TransientError(Exception):
    """Worth retrying later (provider down, overloaded, timed out)."""


class PermanentError(Exception):
    """Retrying will not help (bad number, bad credentials, refused): dead-letter it."""


@dataclass
class Message:
    """One notification: a short text (fits an SMS), a subject, and the data behind it."""

    subject: str
    body: str
    data: dict = field(default_factory=dict)


def _http_status_error(status: int, what: str) -> Exception:
    if status == 429 or status >= 500:
        return TransientError(f"{what}: HTTP {status}")
    return PermanentError(f"{what}: HTTP {status}")


class Notifier:
    """Base class: ``recipients`` (None = the notifier has a single destination) and ``send``."""

    name = "base"
    recipients: list[str | None] = [None]
    dry_run = False  # True when nothing really leaves (recorded as "dry-run", not "sent")

    def send(self, recipient: str | None, msg: Message) -> str | None:  # pragma: no cover
        """Deliver ``msg``; the provider's reference (message id) when it gives one."""
        raise NotImplementedError


class TwilioSMS(Notifier):
    """SMS through the real twilio client (Messages API)."""

    name = "sms"

    def __init__(self, account_sid: str, auth_token: str, from_: str, to: list[str],
                 api_base: str | None = None, timeout: float = 10.0):
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        add_secret(auth_token)
        self.recipients = list(to)
        self.from_ = from_
        self.client = Client(account_sid, auth_token,
                             http_client=TwilioHttpClient(timeout=timeout))
        if api_base:
            # The Api domain's base URL is what every Messages API request is built on.
            self.client.api.base_url = api_base.rstrip("/")
        self.where = safe_url(api_base or "https://api.twilio.com")

    def send(self, recipient: str | None, msg: Message) -> str | None:
        import requests
        from twilio.base.exceptions import TwilioException

        try:
            sent = self.client.messages.create(to=recipient, from_=self.from_, body=msg.body)
            return getattr(sent, "sid", None)
        except TwilioException as exc:
            status = getattr(exc, "status", None)
            detail = str(getattr(exc, "msg", "") or getattr(exc, "title", "") or exc)
            detail = detail.splitlines()[0][:160] if detail else ""
            if status is None:
                raise TransientError(f"twilio {self.where}: {detail}") from None
            err = _http_status_error(int(status), f"twilio {self.where}")
            raise type(err)(f"{err} {detail}".strip()) from None
        except requests.RequestException as exc:
            raise TransientError(f"twilio {self.where}: {type(exc).__name__}") from None


class DryRunSMS(Notifier):
    """What SMS would be sent, printed to stdout (no Twilio credentials configured)."""

    name = "sms"
    dry_run = True

    def __init__(self, to: list[str] | None = None, stream=None):
        self.recipients = list(to) or ["(no TWILIO_TO)"]
        self.stream = stream

    def send(self, recipient: str | None, msg: Message) -> None:
        print(f"DRY-RUN SMS to {recipient}: {msg.body}", file=self.stream or sys.stdout, flush=True)


class Console(Notifier):
    """Alerts printed to stdout, one line each."""

    name = "console"

    def __init__(self, stream=None):
        self.stream = stream

    def send(self, recipient: str | None, msg: Message) -> None:
        print(f"ALERT {msg.body}", file=self.stream or sys.stdout, flush=True)


class Webhook(Notifier):
    """HTTP POST of the alert as JSON to one URL."""

    name = "webhook"

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        import requests

        add_secret(token)
        self.url, self.timeout = url, timeout
        self.session = requests.Session()
        self.headers = {"Content-Type": "application/json", "User-Agent": "edgewatch-bridge"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def send(self, recipient: str | None, msg: Message) -> None:
        import requests

        body = json.dumps({"subject": msg.subject, "text": msg.body, **msg.data})
        try:
            r = self.session.post(self.url, data=body, headers=self.headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientError(f"webhook {safe_url(self.url)}: {type(exc).__name__}") from None
        if r.status_code >= 300:
            raise _http_status_error(r.status_code, f"webhook {safe_url(self.url)}")


class Email(Notifier):
    """E-mail through an SMTP server (STARTTLS, SSL or plain on a trusted network)."""

    name = "email"

    def __init__(self, host: str, port: int, from_: str, to: list[str], user: str | None = None,
                 password: str | None = None, security: str = "starttls", timeout: float = 10.0):
        if security not in ("starttls", "ssl", "none"):
            raise UserError(f"SMTP_SECURITY={security!r}: use starttls, ssl or none")
        add_secret(password)
        self.host, self.port, self.from_ = host, port, from_
        self.recipients = list(to)
        self.user, self.password, self.security, self.timeout = user, password, security, timeout

    def send(self, recipient: str | None, msg: Message) -> None:
        em = EmailMessage()
        em["From"], em["To"], em["Subject"] = self.from_, recipient, msg.subject
        em.set_content(msg.body + "\n\n" + json.dumps(msg.data, indent=2) + "\n")
        cls = smtplib.SMTP_SSL if self.security == "ssl" else smtplib.SMTP
        try:
            with cls(self.host, self.port, timeout=self.timeout) as s:
                if self.security == "starttls":
                    s.starttls()
                if self.user:
                    s.login(self.user, self.password or "")
                s.send_message(em)
        except smtplib.SMTPResponseException as exc:
            # SMTP codes: 4xx is "try again later", 5xx is final.
            what = f"smtp {self.host}:{self.port}: {exc.smtp_code}"
            raise (TransientError if 400 <= exc.smtp_code < 500 else PermanentError)(what) from None
        except smtplib.SMTPRecipientsRefused:
            raise PermanentError(f"smtp {self.host}:{self.port}: recipient {recipient} refused") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"smtp {self.host}:{self.port}: {type(exc).__name__}") from None


def _list(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def sms_from_env(stream=None) -> Notifier:
    """TwilioSMS when SID, token, from and to are all set, else a DryRunSMS."""
    sid, token = env("TWILIO_ACCOUNT_SID"), env("TWILIO_AUTH_TOKEN")
    from_, to = env("TWILIO_FROM"), _list(env("TWILIO_TO"))
    if sid and token and from_ and to:
        return TwilioSMS(sid, token, from_, to, api_base=env("TWILIO_API_BASE"),
                         timeout=float(env("TWILIO_TIMEOUT", "10")))
    missing = [n for n, v in (("TWILIO_ACCOUNT_SID", sid), ("TWILIO_AUTH_TOKEN", token),
                              ("TWILIO_FROM", from_), ("TWILIO_TO", to)) if not v]
    log.warning("SMS dry run: %s not set; printing the SMS instead of sending",
                ", ".join(missing), extra={"notifier": "sms", "dry_run": True})
    return DryRunSMS(to, stream)


def from_env(names: list[str], stream=None) -> list[Notifier]:
    """The notifiers named (sms, console, webhook, email), configured from the environment."""
    out: list[Notifier] = []
    for name in names:
        if name == "sms":
            out.append(sms_from_env(stream))
        elif name == "console":
            out.append(Console(stream))
        elif name == "webhook":
            url = env("EDGEWATCH_WEBHOOK_URL")
            if not url:
                raise UserError("notifier webhook: set EDGEWATCH_WEBHOOK_URL")
            out.append(Webhook(url, env("EDGEWATCH_WEBHOOK_TOKEN")))
        elif name == "email":
            host, from_, to = env("SMTP_HOST"), env("SMTP_FROM"), _list(env("SMTP_TO"))
            if not (host and from_ and to):
                raise UserError("notifier email: set SMTP_HOST, SMTP_FROM and SMTP_TO")
            try:
                port = int(env("SMTP_PORT", "587"))
            except ValueError:
                raise UserError(f"SMTP_PORT={env('SMTP_PORT')!r}: not a port number") from None
            out.append(Email(host, port, from_, to, env("SMTP_USER"), env("SMTP_PASSWORD"),
                             env("SMTP_SECURITY", "starttls")))
        else:
            raise UserError(f"notifier {name!r}: use one of {', '.join(NAMES)}")
    if len({n.name for n in out}) != len(out):
        raise UserError("--notify: a notifier is named twice")
    return out

