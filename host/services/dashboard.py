"""Serve a read-only web dashboard of the fleet from the collector's database and the broker.

    edgewatch dashboard                          # http://127.0.0.1:8080, sqlite:///edgewatch.db
    edgewatch dashboard --db postgresql://... --mqtt mqtts://broker:8883 --port 8080
    EDGEWATCH_DASHBOARD_TOKEN=... edgewatch dashboard --host 0.0.0.0

Pages: the fleet (one row per board: online, last seen, latest readings,
outbox, dropped, model, firmware, free heap; sortable and filterable), a
device (readings with the board's prediction, band and alert markers, zoomable;
the server downsamples every range to at most ``--points`` buckets, so a chart
never ships more than that; the device's alerts with the bridges' notification
outcomes), and the models (registry, approval, which boards run which model).
New readings, alerts and status changes arrive live over server-sent events fed
from MQTT (use the read-only broker user).

Safe by default: binds to 127.0.0.1; any other address needs
``EDGEWATCH_DASHBOARD_TOKEN`` (sent as ``Authorization: Bearer``, or once as
``?token=`` which sets a cookie). Only GET requests exist. No secret (database
password, broker password, token, phone numbers) is ever sent to the browser;
every value from the database or MQTT is put on the page as text, never HTML.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from edgewatch.core.errors import UserError
from edgewatch.core.schema import DEVICE_RE, SchemaError, parse, to_json
from edgewatch.core.settings import (
    add_client_arguments,
    add_secret,
    connect,
    env,
    mqtt_client,
    mqtt_settings,
    safe_url,
    service_client_id,
)
from edgewatch.core.store import DEVICE_COLS, Store, band_columns

log = logging.getLogger("edgewatch.dashboard")

WEB = Path(__file__).with_name("web")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
FLEET_COLS = DEVICE_COLS + ("latest_t", "latest")
MAX_POINTS = 4000


# ---------------------------------------------------------------- data

class Data:
    """The queries behind the pages (each is also timed bare by tools/bench_dashboard.py)."""

    def __init__(self, store: Store, registry: str | None = None):
        self.store = store
        self.registry = registry
        cols = store._columns(store.t_dev)
        self.fleet_cols = [c for c in FLEET_COLS if c in cols]
        try:
            store.query("SELECT 1 FROM {notifications} WHERE 1 = 0")
            self.has_notes = True
        except Exception:
            self.has_notes = False

    # fleet -----------------------------------------------------------
    def fleet_sql(self) -> str:
        return f"SELECT {', '.join(self.fleet_cols)} FROM {{devices}} ORDER BY device"

    def fleet(self) -> dict:
        rows = self.store.query(self.fleet_sql())
        return {"cols": self.fleet_cols, "rows": rows, "now": time.time()}

    # device ----------------------------------------------------------
    def device_span(self, device: str) -> tuple[float | None, float | None]:
        r = self.store.query("SELECT MIN(t), MAX(t) FROM {telemetry} WHERE device = {ph}",
                             (device,))
        return (r[0][0], r[0][1]) if r else (None, None)

    def channels(self, device: str) -> list[str]:
        """The device's channels: those of its latest sample, else every channel column."""
        if "latest" in self.fleet_cols:
            r = self.store.query("SELECT latest FROM {devices} WHERE device = {ph}", (device,))
            if r and r[0][0]:
                try:
                    names = [c.lower() for c in json.loads(r[0][0]).get("values", {})]
                    self._refresh(names)
                    return [c for c in names if c in self.store.channels]
                except (ValueError, AttributeError):
                    pass
        return sorted(self.store.channels)

    def _refresh(self, chans: list[str]) -> None:
        """Columns added by the collector since this store was opened (new channels, bands)."""
        if any(c not in self.store.channels or band_columns(c)[0] not in self.store.band_cols
               for c in chans):
            self.store.channels = self.store._channel_columns()

    def series_sql(self, chans: list[str]) -> str:
        """One row per time bucket: time, then per channel avg/min/max value, pred, lo, hi."""
        q = self.store.d.q
        d = self.store.d.name
        bucket = ("CAST((t - {ph}) / {ph} AS INTEGER)" if d == "sqlite"
                  else "FLOOR((t - {ph}) / {ph})")
        have = self.store.band_cols
        parts = ["MIN(t)", "MAX(anomaly)", "COUNT(*)"]
        for c in chans:
            p, lo, hi = band_columns(c)
            parts += [f"AVG({q(c)})", f"MIN({q(c)})", f"MAX({q(c)})"]
            parts += ([f"AVG({q(p)})", f"MIN({q(lo)})", f"MAX({q(hi)})"] if p in have
                      else ["NULL", "NULL", "NULL"])
        return (f"SELECT {', '.join(parts)} FROM {{telemetry}} WHERE device = {{ph}} "
                f"AND t >= {{ph}} AND t <= {{ph}} GROUP BY {bucket} ORDER BY 1")

    def series_params(self, device: str, start: float, end: float, points: int) -> tuple:
        width = max((end - start) / max(points, 1), 1e-3)
        return (device, start, end, start, width)

    def series(self, device: str, start: float | None, end: float | None,
               points: int = 1500) -> dict:
        points = max(10, min(int(points), MAX_POINTS))
        chans = self.channels(device)
        lo_t, hi_t = self.device_span(device)
        if lo_t is None:
            return {"device": device, "channels": chans, "t": [], "span": None}
        end = hi_t if end is None else end
        start = max(lo_t, end - 86400) if start is None else start
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise UserError("start/end: not a time range")
        rows = self.store.query(self.series_sql(chans),
                                self.series_params(device, start, end, points))
        cols = list(zip(*rows, strict=True)) if rows else [()] * (3 + 6 * len(chans))
        out: dict = {"device": device, "channels": chans, "span": [lo_t, hi_t],
                     "range": [start, end], "t": cols[0], "anomaly": cols[1], "n": cols[2]}
        for i, c in enumerate(chans):
            k = 3 + 6 * i
            out[c] = {name: cols[k + j]
                      for j, name in enumerate(("avg", "min", "max", "pred", "lo", "hi"))}
        a = self.store.query("SELECT t, seq, {rule_q}, channel, {value_q} FROM {{alerts}} "
                             "WHERE device = {{ph}} AND t >= {{ph}} AND t <= {{ph}} "
                             "ORDER BY t LIMIT 2000".format(rule_q=self.store.d.q("rule"),
                                                            value_q=self.store.d.q("value")),
                             (device, start, end))
        out["alerts"] = [list(r) for r in a]
        return out

    def alerts(self, device: str, limit: int = 200) -> list[dict]:
        q = self.store.d.q
        rows = self.store.query(
            f"SELECT seq, t, sample, {q('rule')}, channel, {q('value')}, lo, hi, pred, model "
            "FROM {alerts} WHERE device = {ph} ORDER BY t DESC, seq DESC "
            f"LIMIT {int(limit)}", (device,))
        keys = ("seq", "t", "sample", "rule", "channel", "value", "lo", "hi", "pred", "model")
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        if self.has_notes and out:
            seqs = [a["seq"] for a in out]
            marks = ", ".join(["{ph}"] * len(seqs))
            notes = self.store.query(
                "SELECT alert_seq, notifier, recipient, state, ref, error, attempts, updated "
                f"FROM {{notifications}} WHERE device = {{ph}} AND alert_seq IN ({marks}) "
                "ORDER BY updated", (device, *seqs))
            by: dict = {}
            for s, *rest in notes:
                by.setdefault(s, []).append(dict(zip(
                    ("notifier", "recipient", "state", "ref", "error", "attempts", "updated"),
                    rest, strict=True)))
            for a in out:
                a["notifications"] = by.get(a["seq"], [])
        return out

    # models ----------------------------------------------------------
    def models(self) -> dict:
        boards = self.store.query("SELECT device, model, fw, state, error FROM {devices} "
                                  "ORDER BY device")
        entries, deployed = [], {}
        if self.registry and Path(self.registry).is_dir():
            from edgewatch.services.registry import Registry

            reg = Registry(self.registry)
            try:
                deployed = reg.deployments()
                entries = [e.meta for e in reg.entries()]
            except Exception as exc:  # a broken registry must not take the page down
                log.warning("registry %s: %s", self.registry, exc)
        fleet_model = None
        d = deployed.get("fleet") if isinstance(deployed, dict) else None
        if isinstance(d, dict):
            for e in entries:
                if e.get("id") == d.get("id"):
                    fleet_model = e.get("model_id")
        by_model: dict = {}
        for dev, model, *_ in boards:
            by_model.setdefault(model or "", []).append(dev)
        rows = []
        for dev, model, fw, state, error in boards:
            if error and str(error).startswith("model"):
                ota = f"refused ({error})"
            elif fleet_model is None:
                ota = "-"
            elif model == fleet_model:
                ota = "up to date"
            else:
                ota = f"pending {fleet_model}"
            rows.append({"device": dev, "model": model, "fw": fw, "state": state, "ota": ota})
        for e in entries:
            e["boards"] = by_model.get(e.get("model_id") or "", [])
        return {"entries": entries, "boards": rows, "by_model": by_model,
                "deployed": deployed if isinstance(deployed, dict) else {}}


# ---------------------------------------------------------------- live feed

class Hub:
    """MQTT (validated by host.schema) -> every open event stream."""

    def __init__(self, mqtt=None, prefix: str = "edgewatch"):
        self.mqtt, self.prefix = mqtt, prefix
        self.clients: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue, str | None]] = set()
        self.lock = threading.Lock()
        self.client = None

    def start(self) -> None:
        if self.mqtt is None:
            return
        self.client = mqtt_client(self.mqtt, service_client_id("dashboard", None))
        self.client.on_message = self._on_message
        p = self.mqtt.prefix
        connect(self.client, self.mqtt, [(f"{p}/+/telemetry", 0), (f"{p}/+/alert", 0),
                                         (f"{p}/+/status", 0)])

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def _on_message(self, _c, _u, msg) -> None:
        try:
            rec = parse(msg.topic, msg.payload, self.mqtt.prefix)
        except SchemaError:
            return
        data = json.dumps({"kind": rec.kind, "received": time.time(), **to_json(rec)})
        self.publish(rec.device, data)

    def publish(self, device: str, data: str) -> None:
        with self.lock:
            clients = list(self.clients)
        for loop, q, only in clients:
            if only is None or only == device:
                try:
                    loop.call_soon_threadsafe(_offer, q, data)
                except RuntimeError:  # that loop has closed
                    pass

    def add(self, only: str | None):
        item = (asyncio.get_running_loop(), asyncio.Queue(maxsize=1000), only)
        with self.lock:
            self.clients.add(item)
        return item

    def remove(self, item) -> None:
        with self.lock:
            self.clients.discard(item)


def _offer(q: asyncio.Queue, data: str) -> None:
    if not q.full():  # a stalled browser loses live updates, never the server's memory
        q.put_nowait(data)


# ---------------------------------------------------------------- web app

def create_app(data: Data, hub: Hub, token: str | None = None):
    """The Starlette application (routes, token check, security headers)."""
    import orjson
    import plotly
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import (
        FileResponse,
        HTMLResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
        StreamingResponse,
    )

    def JSONResponse(content) -> Response:  # noqa: N802
        # orjson: the float-heavy chart and fleet answers encode 10-20x faster than json
        return Response(orjson.dumps(content), media_type="application/json")
    from starlette.routing import Route

    jinja = Environment(loader=FileSystemLoader(WEB / "templates"),
                        autoescape=select_autoescape(default=True, default_for_string=True))
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    statics = {"plotly.min.js": plotly_js, "dashboard.js": WEB / "static" / "dashboard.js",
               "dashboard.css": WEB / "static" / "dashboard.css"}

    def page(name: str, **ctx) -> HTMLResponse:
        return HTMLResponse(jinja.get_template(name).render(**ctx))

    def device_id(request) -> str:
        dev = request.path_params["device"]
        if len(dev) > 200:
            raise UserError("device id too long")
        return dev

    def number(request, name: str, default=None):
        v = request.query_params.get(name)
        if v in (None, ""):
            return default
        try:
            x = float(v)
        except ValueError:
            raise UserError(f"{name}={v[:40]!r}: not a number") from None
        if not math.isfinite(x):
            raise UserError(f"{name}: not a finite number")
        return x

    def fleet_page(request):
        return page("fleet.html", title="Fleet")

    def device_page(request):
        dev = device_id(request)
        return page("device.html", title=dev, device=dev, device_json=json.dumps(dev),
                    valid=bool(DEVICE_RE.fullmatch(dev)))

    def models_page(request):
        return page("models.html", title="Models", m=data.models(),
                    registry=data.registry or "")

    # The API runs on the event loop, not in the thread pool: its queries are index reads of
    # a few ms, and on a busy machine the hand-off to a worker thread costs more than that.
    async def api_fleet(request):
        return JSONResponse(data.fleet())

    async def api_series(request):
        dev = device_id(request)
        return JSONResponse(data.series(dev, number(request, "start"), number(request, "end"),
                                        int(number(request, "points", 1500))))

    async def api_alerts(request):
        return JSONResponse(data.alerts(device_id(request)))

    def static(request):
        path = statics.get(request.path_params["name"])
        if path is None:
            return PlainTextResponse("not found", 404)
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    async def events(request):
        if hub.client is None:  # started with --no-live: 204 tells EventSource to stop
            return Response(status_code=204)
        item = hub.add(request.query_params.get("device"))
        q = item[1]

        async def stream():
            try:
                yield ": live\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), 15)
                        yield f"data: {msg}\n\n"
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
            finally:
                hub.remove(item)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    csp = [(b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            b"frame-ancestors 'none'"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    class Guard:
        """GET only, the token when one is set, security headers and Server-Timing.

        A plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task group
        and two memory streams per request, more than the fleet query itself).
        """

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            t0 = time.perf_counter()
            from starlette.requests import Request

            request = Request(scope)
            if request.method not in ("GET", "HEAD"):
                return await PlainTextResponse("read-only", 405)(scope, receive, send)
            if token:
                given = request.query_params.get("token")
                if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                    resp = RedirectResponse(request.url.remove_query_params("token"), 303)
                    resp.set_cookie("ew_token", token, httponly=True, samesite="strict")
                    return await resp(scope, receive, send)
                auth = request.headers.get("authorization", "")
                have = (auth[7:] if auth.lower().startswith("bearer ")
                        else request.cookies.get("ew_token", ""))
                if not hmac.compare_digest(have.encode(), token.encode()):
                    return await PlainTextResponse("token required", 401)(scope, receive, send)

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    ms = (time.perf_counter() - t0) * 1000
                    message["headers"] = [*message.get("headers", []), *csp,
                                          (b"server-timing", f"app;dur={ms:.3f}".encode())]
                await send(message)

            await self.app(scope, receive, send_with_headers)

    async def user_error(request, exc):
        return PlainTextResponse(str(exc), 400)

    routes = [Route("/", fleet_page), Route("/device/{device:path}", device_page),
              Route("/models", models_page), Route("/api/fleet", api_fleet),
              Route("/api/device/{device:path}/series", api_series),
              Route("/api/device/{device:path}/alerts", api_alerts),
              Route("/events", events), Route("/static/{name}", static)]
    return Starlette(routes=routes, middleware=[Middleware(Guard)],
                     exception_handlers={UserError: user_error})


# ---------------------------------------------------------------- command

def add_arguments(parser) -> None:
    """Options of `edgewatch dashboard`."""
    parser.add_argument("--db", help="the collector's database URL (env EDGEWATCH_DB_URL; "
                        "default sqlite:///edgewatch.db)")
    parser.add_argument("--table-prefix", default="", help="prefix of the table names")
    parser.add_argument("--host", default=None,
                        help="address to bind (default 127.0.0.1; any other address needs "
                        "EDGEWATCH_DASHBOARD_TOKEN)")
    parser.add_argument("--port", type=int, default=None,
                        help="TCP port (env EDGEWATCH_DASHBOARD_PORT; default 8080; 0 = any free)")
    parser.add_argument("--registry", default=None,
                        help="model registry folder (env EDGEWATCH_REGISTRY; default "
                        "models/registry)")
    parser.add_argument("--no-live", action="store_true",
                        help="do not connect to the broker (no live updates)")
    add_client_arguments(parser, log_level="warning")


def run(args) -> int:
    """Serve the dashboard until SIGTERM/SIGINT."""
    import socket

    import uvicorn
    from edgewatch.services.metrics import setup_logging

    setup_logging(args.log_level)
    mqtt = None if args.no_live else mqtt_settings(args)
    host = args.host or env("EDGEWATCH_DASHBOARD_HOST", "127.0.0.1")
    token = env("EDGEWATCH_DASHBOARD_TOKEN") or None
    add_secret(token)
    if host not in LOOPBACK and not token:
        raise UserError(f"--host {host}: other addresses than 127.0.0.1 need a token: set "
                        "EDGEWATCH_DASHBOARD_TOKEN")
    if token and len(token) < 16:
        raise UserError("EDGEWATCH_DASHBOARD_TOKEN: use at least 16 characters")
    raw = env("EDGEWATCH_DASHBOARD_PORT", "8080")
    where = f"--port {args.port}" if args.port is not None else f"EDGEWATCH_DASHBOARD_PORT={raw!r}"
    try:
        port = args.port if args.port is not None else int(raw)
    except ValueError:
        raise UserError(f"{where}: not a number") from None
    if not 0 <= port <= 65535:  # bind() would raise OverflowError: a traceback
        raise UserError(f"{where}: expected a TCP port 0-65535")
    url = args.db or env("EDGEWATCH_DB_URL", "sqlite:///edgewatch.db")
    store = Store(url, args.table_prefix, create=False)
    data = Data(store, args.registry or env("EDGEWATCH_REGISTRY", "models/registry"))
    hub = Hub(mqtt)
    hub.start()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        hub.stop()
        raise UserError(f"{host}:{port}: cannot listen: {exc.strerror or exc}") from None
    sock.listen(128)  # connections wait in the backlog until uvicorn runs
    bound = sock.getsockname()[1]
    app = create_app(data, hub, token)
    shown = f"[{host}]" if ":" in host else host
    print(f"dashboard on http://{shown}:{bound}/ over {safe_url(url)}"
          f"{'' if mqtt is None else ' live from ' + mqtt.url} (pid {os.getpid()})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        hub.stop()
        store.close()
    return 0
