"""Where alerts go: Twilio SMS (or a dry run of it), console, webhook, e-mail.

A notifier sends one :class:`Message` to one recipient and tells the bridge's
outbox what to do when that fails: :class:`TransientError` (HTTP 5xx or 429,
timeouts, connection refused, SMTP 4xx) is retried with backoff,
:class:`PermanentError` (any other 4xx, SMTP 5xx, a bad number) goes to the
dead-letter state with one clear log line.

Settings come from the environment or `.env` (host/core/settings.py):

- SMS: ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, ``TWILIO_FROM``,
  ``TWILIO_TO`` (comma-separated); ``TWILIO_API_BASE`` points the real twilio
  client at another Messages API endpoint (a proxy, or a local test server);
  ``TWILIO_TIMEOUT`` (s, default 10) and ``TWILIO_MAX_LATENCY`` (s, default 300:
  how long after a request a message may still be missing from Twilio's
  Messages list; an unanswered send is only repeated once it is not listed
  after that long). Without SID/token/from/to, SMS runs as a dry run that
  prints what it would send.
- Webhook: ``EDGEWATCH_WEBHOOK_URL``, optional ``EDGEWATCH_WEBHOOK_TOKEN`` (Bearer).
  Every attempt for one alert and URL carries the same ``Idempotency-Key`` header,
  so a receiver can drop the repeat of a request whose answer was lost.

Exactly once as far as the provider can tell: a send whose outcome is unknown
(:class:`OutcomeUnknown`: no answer within the timeout, connection lost after
the request went out, or a bridge killed mid-send) is not repeated blindly.
Each SMS body ends with a short reference (``ref 1a2b3c4d``, from the alert's
device, epoch and seq) and the bridge asks Twilio's Messages list for it first
(:meth:`TwilioSMS.lookup`).
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
from edgewatch.core.settings import add_secret, env, safe_url, url_origin, url_secrets

log = logging.getLogger("edgewatch.notify")
NAMES = ("sms", "console", "webhook", "email")


class TransientError(Exception):
    """Worth retrying later (provider down, overloaded, timed out)."""


class PermanentError(Exception):
    """Retrying will not help (bad number, bad credentials, refused): dead-letter it."""


class OutcomeUnknown(TransientError):
    """The request may have reached the provider (timeout, connection lost after sending)."""


def _requests_error(exc: Exception, what: str) -> TransientError:
    """A requests exception as TransientError (never sent) or OutcomeUnknown (maybe sent)."""
    import requests

    name = type(exc).__name__
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(f"{what}: {name}")
    if isinstance(exc, requests.ConnectionError):
        # refused / DNS / no route: the request never left; anything else (reset, remote
        # closed without an answer) may have come after the provider read it
        from urllib3.exceptions import NewConnectionError

        e, steps = exc, 0
        while e is not None and steps < 8:
            if isinstance(e, NewConnectionError):
                return TransientError(f"{what}: {name}")
            arg = e.args[0] if e.args and isinstance(e.args[0], BaseException) else None
            reason = getattr(e, "reason", None)  # ssl.SSLError's is a string
            reason = reason if isinstance(reason, BaseException) else None
            e, steps = reason or arg or e.__cause__, steps + 1
        return OutcomeUnknown(f"{what}: {name} (outcome unknown)")
    if isinstance(exc, requests.Timeout):
        return OutcomeUnknown(f"{what}: {name} (outcome unknown)")
    return TransientError(f"{what}: {name}")


@dataclass
class Message:
    """One notification: a short text (fits an SMS), a subject, and the data behind it."""

    subject: str
    body: str
    data: dict = field(default_factory=dict)
    ref: str = ""  # short reference carried in the body ("ref 1a2b3c4d"), for lookups
    key: str = ""  # stable per alert and destination: the webhook's Idempotency-Key


def _http_status_error(status: int, what: str) -> Exception:
    if status == 429 or status >= 500:
        return TransientError(f"{what}: HTTP {status}")
    return PermanentError(f"{what}: HTTP {status}")


class Notifier:
    """Base class: ``recipients`` (None = the notifier has a single destination) and ``send``."""

    name = "base"
    recipients: list[str | None] = [None]
    dry_run = False  # True when nothing really leaves (recorded as "dry_run", not "sent")

    def send(self, recipient: str | None, msg: Message) -> str | None:  # pragma: no cover
        """Deliver ``msg``; the provider's reference (message id) when it gives one."""
        raise NotImplementedError

    # a notifier that can tell whether an earlier send was created sets this and lookup()
    can_lookup = False
    max_latency = 0.0  # s: after this long a message created by a request is surely listed

    def lookup(self, recipient: str | None, msg: Message, since: float) -> str | None:
        """The provider's id of ``msg`` sent to ``recipient`` at or after ``since``, or None."""
        return None  # pragma: no cover


def _twilio_http_client(timeout: float):
    """twilio's own HTTP client (requests), with the settings it reads from the environment
    on every request (proxies, CA bundle: ``Session.merge_environment_settings``, about a
    fifth of a send's CPU time) read once per scheme and host: the environment of a running
    bridge does not change."""
    from twilio.http.http_client import TwilioHttpClient

    class HttpClient(TwilioHttpClient):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._settings: dict[str, dict] = {}
            if self.session is not None:
                merge = self.session.merge_environment_settings

                def merged(url, proxies, stream, verify, cert):
                    if stream is not None or verify is not None or cert is not None:
                        return merge(url, proxies, stream, verify, cert)
                    origin = "/".join(url.split("/", 3)[:3])
                    got = self._settings.get(origin)
                    if got is None:
                        got = self._settings[origin] = merge(url, proxies, None, None, None)
                    return dict(got)

                self.session.merge_environment_settings = merged

    return HttpClient(timeout=timeout)


class TwilioSMS(Notifier):
    """SMS through the real twilio client (Messages API)."""

    name = "sms"
    can_lookup = True

    def __init__(self, account_sid: str, auth_token: str, from_: str, to: list[str],
                 api_base: str | None = None, timeout: float = 10.0, max_latency: float = 300.0):
        from twilio.rest import Client

        add_secret(auth_token)
        self.recipients = list(to)
        self.from_ = from_
        self.client = Client(account_sid, auth_token, http_client=_twilio_http_client(timeout))
        if api_base:
            # The Api domain's base URL is what every Messages API request is built on.
            self.client.api.base_url = api_base.rstrip("/")
        self.where = safe_url(api_base or "https://api.twilio.com")
        self.max_latency = max_latency

    def lookup(self, recipient: str | None, msg: Message, since: float) -> str | None:
        """Find ``msg`` in Twilio's Messages list (To, From, DateSent>=) by its reference.

        ``since`` is when the first attempt started; a minute earlier is asked for
        (clocks differ). A body without a reference (queued by an older version)
        is matched whole. Raises TransientError when the list cannot be read.
        """
        import datetime

        import requests
        from twilio.base.exceptions import TwilioException

        after = datetime.datetime.fromtimestamp(since - 60, datetime.timezone.utc)
        needle = f"ref {msg.ref}" if msg.ref else None
        try:
            for m in self.client.messages.stream(to=recipient, from_=self.from_,
                                                 date_sent_after=after):
                body = m.body or ""
                if (body.rstrip().endswith(needle) or f"{needle} " in body) if needle \
                        else body == msg.body:
                    return m.sid or "found"
        except TwilioException as exc:
            raise TransientError(f"twilio {self.where}: lookup failed: "
                                 f"HTTP {getattr(exc, 'status', None) or '?'}") from None
        except requests.RequestException as exc:
            raise TransientError(f"twilio {self.where}: lookup failed: "
                                 f"{type(exc).__name__}") from None
        return None

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
            if int(status) in (500, 502, 504):  # a gateway or a crash after the request: maybe created
                raise OutcomeUnknown(f"twilio {self.where}: HTTP {status} (outcome unknown)") from None
            err = _http_status_error(int(status), f"twilio {self.where}")
            raise type(err)(f"{err} {detail}".strip()) from None
        except requests.RequestException as exc:
            raise _requests_error(exc, f"twilio {self.where}") from None


class DryRunSMS(Notifier):
    """What SMS would be sent, printed to stdout (no Twilio credentials configured)."""

    name = "sms"
    dry_run = True  # counted as outcome "dry_run", never "sent"

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
        for part in url_secrets(url):  # masked in every log line (urllib3's debug lines too)
            add_secret(part)
        self.url, self.timeout = url, timeout
        self.where = f"webhook {url_origin(url)}"  # what errors, logs and the outbox show
        self.session = requests.Session()
        self.headers = {"Content-Type": "application/json", "User-Agent": "edgewatch-bridge"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def send(self, recipient: str | None, msg: Message) -> None:
        import requests

        body = json.dumps({"subject": msg.subject, "text": msg.body, **msg.data})
        headers = dict(self.headers)
        if msg.key:
            headers["Idempotency-Key"] = msg.key  # the same on every attempt for this alert
        try:
            r = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise _requests_error(exc, self.where) from None
        if r.status_code >= 300:
            raise _http_status_error(r.status_code, self.where)


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


def _seconds(name: str, default: float, positive: bool = False) -> float:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        x = float(value)
    except ValueError:
        x = -1.0
    if not x >= 0 or x == float("inf") or (positive and x == 0):
        raise UserError(f"{name}={value!r}: not a number of seconds")
    return x


def sms_from_env(stream=None) -> Notifier:
    """TwilioSMS when SID, token, from and to are all set, else a DryRunSMS."""
    sid, token = env("TWILIO_ACCOUNT_SID"), env("TWILIO_AUTH_TOKEN")
    from_, to = env("TWILIO_FROM"), _list(env("TWILIO_TO"))
    if sid and token and from_ and to:
        return TwilioSMS(sid, token, from_, to, api_base=env("TWILIO_API_BASE"),
                         timeout=_seconds("TWILIO_TIMEOUT", 10.0, positive=True),
                         max_latency=_seconds("TWILIO_MAX_LATENCY", 300.0))
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

