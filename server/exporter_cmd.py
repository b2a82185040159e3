"""``nasofl-coord exporter --run-log PATH [--port 9464] [--host 127.0.0.1] [--once]``: Prometheus metrics.

Serves ``/metrics`` (prometheus-client text format) with the counters and gauges of server/telemetry.py, read
from the study's append-only run log on every scrape. Start it next to the SuperLink before or during a run (a
missing run log is reported as ``nasofl_server_run_log_present_bool 0``). ``--once`` prints the metrics of the
current file and exits.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from server.telemetry import RunLogCollector
from shared.cli import EXIT_OK
from shared.errors import ConfigError

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-log",
        type=Path,
        required=True,
        metavar="PATH",
        help="the study's run-log.jsonl (in its out-dir)",
    )
    parser.add_argument("--port", type=int, default=9464, help="HTTP port for /metrics (default 9464)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for a Prometheus on another host/container)",
    )
    parser.add_argument("--once", action="store_true", help="print the metrics once and exit")


def build_registry(run_log: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RunLogCollector(run_log))
    return registry


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: expected 1..65535")
    registry = build_registry(args.run_log)
    if args.once:
        print(generate_latest(registry).decode(), end="")
        return EXIT_OK
    if not args.run_log.exists():
        log.warning("run log %s does not exist yet; metrics appear once the study writes it", args.run_log)
    try:
        server, _thread = start_http_server(args.port, addr=args.host, registry=registry)
    except OSError as err:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({err}); pick another --port") from err
    print(f"serving http://{args.host}:{args.port}/metrics from {args.run_log} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
    return EXIT_OK
