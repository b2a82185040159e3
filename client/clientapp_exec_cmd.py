"""``nasofl-site clientapp-exec``: the site's ClientApp executor, for a SuperNode joined with ``--isolation process``.

    nasofl-site clientapp-exec --approved-apps FILE --cache DIR [--site-name NAME] [--runtime-port 9094]

Replaces itself with Flower's ``flower-superexec`` attached to the SuperNode's local Runtime API
(``127.0.0.1:<runtime-port>``), holding the SuperNode's ``<cache>/superexec.secret`` (made by ``nasofl-site join
--isolation process``), with the approved-apps gate first on ``PATH`` (``client.clientapp_gate``). Run it as its
own service so that the ClientApp processes get their own sandbox: no network but loopback, the site folder
read-only, no access to the node key (deploy/systemd/nasofl-clientapp.service).

It also starts the site's warm-start zygote (client/clientapp_zygote.py) beside SuperExec, in this service's
process group and sandbox (socket ``<cache>/clientapp-gate/zygote.sock``); it stops when SuperExec stops.
``--cold-clientapp`` leaves it out.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from shared.cli import EXIT_FAILED
from shared.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--approved-apps", type=Path, required=True, metavar="FILE", help="nasofl-site approve"
    )
    parser.add_argument(
        "--cache", type=Path, required=True, metavar="DIR", help="the --cache given to nasofl-site join"
    )
    parser.add_argument("--site-name", required=True, help="this site's name (in refusal messages)")
    parser.add_argument(
        "--runtime-port", type=int, default=9094, help="the SuperNode's --runtime-port (default 9094)"
    )
    parser.add_argument(
        "--runtime-host",
        default="127.0.0.1",
        help="the SuperNode's host (default 127.0.0.1; `supernode` in deploy/docker/hospital.compose.yml)",
    )
    parser.add_argument(
        "--cold-clientapp",
        action="store_true",
        help="no warm-start zygote: every ClientApp process imports Flower, torch and the app itself",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")


def run(args: argparse.Namespace) -> int:
    from client.approval import APPROVED_APPS_ENV, SITE_NAME_ENV, read_approved
    from client.clientapp_gate import start_zygote, write_launcher
    from client.node_cmd import NODE_ENV

    if not read_approved(args.approved_apps):
        raise ConfigError(
            f"--approved-apps {args.approved_apps}: no approved app listed (nasofl-site approve)"
        )
    secret = args.cache / "superexec.secret"
    if not secret.is_file():
        raise ConfigError(
            f"{secret} not found: start the SuperNode first with `nasofl-site join ... --cache {args.cache} "
            "--isolation process` (it makes the secret)"
        )
    gate = write_launcher(args.cache.resolve() / "clientapp-gate", warm=not args.cold_clientapp)
    exe = Path(sys.executable).with_name("flower-superexec")
    binary = str(exe) if exe.exists() else (shutil.which("flower-superexec") or "flower-superexec")
    cmd = [
        binary,
        "--insecure",  # the SuperNode's local Runtime API is plain HTTP, on loopback or a Docker internal network
        "--runtime-api-address",
        f"{args.runtime_host}:{args.runtime_port}",
        "--superexec-auth-secret-file",
        str(secret.resolve()),
    ]
    env = {
        **NODE_ENV,
        APPROVED_APPS_ENV: str(args.approved_apps.resolve()),
        SITE_NAME_ENV: args.site_name,
        "PATH": f"{gate}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if args.dry_run:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd))
        return 0
    print("starting: " + shlex.join(cmd), flush=True)
    os.environ.update(env)
    if not args.cold_clientapp:
        start_zygote(gate)
    os.execvp(cmd[0], cmd)
    return EXIT_FAILED  # not reached
