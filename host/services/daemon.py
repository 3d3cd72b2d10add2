"""What the long-running services (collect, bridge, score) share: options, metrics, shutdown."""

from __future__ import annotations

import logging
import signal
import threading

from edgewatch.core.errors import UserError
from edgewatch.core.settings import add_client_arguments, env
from edgewatch.services.metrics import MAX_DEVICES, OTHER, Metrics


def add_service_arguments(parser, shares: str, drops: str, metrics: bool = True) -> None:
    """The options every scaled-out service takes, then the MQTT ones.

    ``shares``: what instances of one --group split; ``drops``: what happens to other devices.
    """
    parser.add_argument("--group", help=f"shared-subscription group: {shares} (env EDGEWATCH_GROUP)")
    parser.add_argument("--client-id", help="MQTT client id (persistent session; default: 128 "
                        "random bits created once in the state directory)")
    parser.add_argument("--devices", help="only these device ids (a,b,c or a file, one per line; "
                        f"env EDGEWATCH_DEVICES); {drops}")
    if metrics:
        parser.add_argument("--metrics-port", type=int,
                            help="serve Prometheus metrics on this port (env EDGEWATCH_METRICS_PORT)")
        parser.add_argument("--metrics-addr", default="127.0.0.1")
        parser.add_argument("--max-devices", type=int,
                            help="devices given their own metric series (default "
                            f"{MAX_DEVICES}); the others share device=\"{OTHER}\" and are "
                            "counted in edgewatch_devices_over_cap (env EDGEWATCH_MAX_DEVICES)")
    add_client_arguments(parser)


def serve_metrics(name: str, args, log: logging.Logger) -> Metrics:
    """The service's metrics, served over HTTP when --metrics-port (or the env) asks for it."""
    cap = getattr(args, "max_devices", None)
    if cap is None:
        raw = env("EDGEWATCH_MAX_DEVICES")
        try:
            cap = int(raw) if raw else MAX_DEVICES
        except ValueError:
            raise UserError(f"EDGEWATCH_MAX_DEVICES: {raw!r} is not a number") from None
    if cap < 0:
        raise UserError(f"--max-devices: {cap} is negative")
    port, where = args.metrics_port or None, f"--metrics-port {args.metrics_port}"
    if port is None and env("EDGEWATCH_METRICS_PORT"):
        raw = env("EDGEWATCH_METRICS_PORT")
        where = f"EDGEWATCH_METRICS_PORT={raw!r}"
        try:
            port = int(raw)
        except ValueError:
            raise UserError(f"{where}: not a port number") from None
    if port is not None and not 0 <= port <= 65535:
        raise UserError(f"{where}: expected a TCP port 0-65535")
    metrics = Metrics(name, max_devices=cap)
    if port is not None:
        try:
            bound = metrics.serve(port, args.metrics_addr)
        except (OSError, OverflowError) as exc:  # a bad address, a port in use
            raise UserError(f"--metrics-addr {args.metrics_addr} port {port}: cannot serve the "
                            f"metrics there ({getattr(exc, 'strerror', None) or exc})") from None
        log.info("metrics on http://%s:%d/metrics", args.metrics_addr, bound)
    return metrics


def serve_until_signal(service, banner: str) -> None:
    """Start ``service``, print ``banner``, run until SIGTERM/SIGINT, then stop it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    print(banner, flush=True)
    stop.wait()
    service.stop()
