"""``nasofl-site join``: validate the site folder, then become a Flower 1.42 SuperNode of the federation.

    nasofl-site join SITE_DIR --superlink HOST:8000 --ca ca.crt --key keys/hospital-a \
        --approved-apps approved-apps.txt [--cache DIR] [--eval-only]
    nasofl-site join --check --superlink HOST:8000 --ca ca.crt      # connection self-test only

The site folder is validated first (same checks as ``nasofl-site validate``); blocking problems print the report
and stop here (exit 1). Otherwise the process is replaced by ``flower-supernode`` with TLS (``--ca``), node
authentication (``--key``: the private key of ``deploy/node-keys.sh``, registered by the coordinator) and the
node config ``data-path="..." cache-path="..." eval-only=...``. ``--dry-run`` prints that command instead.

Only apps the site approved run here: the SuperNode's ``PATH`` starts with ``<cache>/clientapp-gate``, whose
``flwr-clientapp`` (``client.clientapp_gate``) refuses any FAB whose SHA-256 is not in ``--approved-apps``
(written by ``nasofl-site approve``). With ``--isolation subprocess`` the SuperNode starts its ClientApp processes
itself, so ``join`` also starts the site's warm-start zygote (client/clientapp_zygote.py) beside it, in the same
process group and sandbox; ``--cold-clientapp`` leaves it out. Pseudonyms use the site's own random salt (``<cache>/pseudonym-salt``,
generated on first use); the public default salt is refused.

What leaves the site once joined: model arrays and the aggregate counts / histograms of ``shared/protocol.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from shared.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from shared.errors import ConfigError
from shared.pseudonym import DEFAULT_SALT, site_salt

#: Environment the SuperNode (and the ClientApp processes it starts) runs with: no anonymous usage telemetry,
#: no PyPI update check, never install packages at run time (the hospital's environment is fixed); its SuperExec
#: asks the SuperNode for a ClientApp task every 0.2 s instead of Flower's 1 s (one loopback request each; Flower
#: 1.42 reads FLWR_SUPEREXEC_TASK_POLL_INTERVAL in flwr/supercore/superexec/run_superexec.py).
NODE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}


def configure(parser: argparse.ArgumentParser) -> None:
    from client.node_data import PRETRAINING_CHOICES

    parser.add_argument(
        "site_dir", type=Path, nargs="?", metavar="SITE_DIR", help="site folder (labels.csv + DICOM tree)"
    )
    parser.add_argument(
        "--superlink",
        required=True,
        metavar="HOST:PORT",
        help="the coordinator's SuperLink, e.g. fl.example.org:8000",
    )
    parser.add_argument("--ca", type=Path, required=True, metavar="CA", help="the federation CA (ca.crt)")
    parser.add_argument(
        "--key", type=Path, metavar="KEY", help="this site's private node key (deploy/node-keys.sh)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="ingestion / ROI cache (default <SITE_DIR>/../.nasofl-cache/<site>)",
    )
    parser.add_argument("--eval-only", action="store_true", help="this site only evaluates, never trains")
    parser.add_argument("--site-name", help="site name reported to the coordinator (default: folder name)")
    parser.add_argument(
        "--approved-apps",
        type=Path,
        metavar="FILE",
        help="the site's approved-apps file (nasofl-site approve): only these app FABs run here (required)",
    )
    parser.add_argument(
        "--privacy-budget",
        type=float,
        metavar="EPS",
        help="the site's total epsilon over every study under local DP (unit: one patient); rounds that would "
        "exceed it are refused (node config privacy-budget-epsilon; see PRIVACY.md)",
    )
    parser.add_argument(
        "--pretraining",
        choices=PRETRAINING_CHOICES,
        help="what contrastive pretraining rounds (the study's cls-pretrain-rounds) may learn from here: all (training "
        "patients and those without a diagnosis; the default), diagnosed (training patients only) or refuse (no "
        "pretraining round runs here; node config pretraining; see PRIVACY.md)",
    )
    parser.add_argument(
        "--salt",
        help="site pseudonym salt (default: the site's own random salt, <cache>/pseudonym-salt, made on first use)",
    )
    parser.add_argument(
        "--runtime-port",
        type=int,
        default=9094,
        help="local port of the SuperNode's Runtime API for its ClientApp processes (127.0.0.1; default 9094)",
    )
    parser.add_argument(
        "--max-retries", type=int, help="give up after this many connection attempts (default: retry forever)"
    )
    parser.add_argument(
        "--isolation",
        choices=("subprocess", "process"),
        default="subprocess",
        help="subprocess (default): the SuperNode starts its ClientApp processes itself; process: they come from "
        "a separate `nasofl-site clientapp-exec` (its own sandbox: no network, no node key), and the SuperNode's "
        "Runtime API hands tasks only to holders of <cache>/superexec.secret",
    )
    parser.add_argument(
        "--cold-clientapp",
        action="store_true",
        help="no warm ClientApp start: every ClientApp process imports Flower, torch and the app itself (by "
        "default, with --isolation subprocess, a zygote beside the SuperNode has them imported; see "
        "client/clientapp_zygote.py)",
    )
    parser.add_argument("--check", action="store_true", help="only test the TLS connection to the SuperLink")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, then print the command instead of running it"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` allowed) -> (host, port); ConfigError naming the value otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--superlink {address!r}: expected HOST:PORT, e.g. fl.example.org:8000")
    return host, int(port)


def check_superlink(address: str, ca: Path, timeout: float = 10.0) -> tuple[bool, str]:
    """HTTPS GET ``/health`` on the SuperLink, verifying its certificate (and host name) with ``ca``."""
    host, port = split_address(address)
    if not ca.is_file():
        return False, f"CA file {ca} not found: ask the coordinator for ca.crt"
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as err:
        return False, f"CA file {ca} is not a PEM certificate ({err})"
    url_host = f"[{host}]" if ":" in host else host
    url = f"https://{url_host}:{port}/health"
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        return False, f"{url} answered HTTP {err.code}: this port is not a Flower 1.42 SuperLink?"
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return False, (
                f"TLS check failed for {host}: {reason.verify_message}. The SuperLink certificate must be signed "
                f"by {ca} and name {host!r} in its SANs (deploy/certs.sh {host})"
            )
        if isinstance(reason, ssl.SSLError):
            return (
                False,
                f"TLS handshake with {address} failed ({reason}): is the SuperLink started with TLS?",
            )
        return False, f"cannot reach {address} ({reason}): check the address, the port and the firewall"
    except (TimeoutError, OSError) as err:
        return False, f"cannot reach {address} ({err}): check the address, the port and the firewall"
    if status != 200:
        return False, f"{url} answered HTTP {status}, expected 200"
    return True, f"SuperLink {address} reachable over TLS (certificate verified with {ca}), /health OK"


def toml_string(value: str) -> str:
    """A TOML basic string (JSON string syntax is valid TOML for these values)."""
    return json.dumps(value)


def node_config(
    site_dir: Path,
    cache: Path | None,
    eval_only: bool,
    site_name: str | None,
    salt: str | None,
    privacy_budget: float | None = None,
    pretraining: str | None = None,
) -> str:
    """``--node-config`` value for client/node_data.py: TOML-quoted strings, absolute paths. ``cache`` None:
    the node's default cache folder. ``salt`` only when given on the command line (else the ClientApp reads the
    site salt file itself: node config shows in ``ps``)."""
    parts = [f"data-path={toml_string(str(site_dir.resolve()))}"]
    if cache is not None:
        parts.append(f"cache-path={toml_string(str(cache.resolve()))}")
    parts.append(f"eval-only={'true' if eval_only else 'false'}")
    if site_name:
        parts.append(f"site-name={toml_string(site_name)}")
    if salt is not None:
        parts.append(f"pseudonym-salt={toml_string(salt)}")
    if privacy_budget is not None:
        parts.append(f"privacy-budget-epsilon={float(privacy_budget)!r}")
    if pretraining is not None:
        parts.append(f"pretraining={toml_string(pretraining)}")
    return " ".join(parts)


def superexec_secret(cache: Path) -> Path:
    """``<cache>/superexec.secret`` (256 random bits, 0600, made on first use): the SuperNode's Runtime API hands
    ClientApp tasks only to a SuperExec holding it (``--isolation process``)."""
    import secrets

    path = cache / "superexec.secret"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by other users: chmod 600 {path}")
    return path


def site_cache(args: argparse.Namespace) -> Path:
    from client.node_data import default_cache_dir

    return args.cache if args.cache is not None else default_cache_dir(args.site_dir, site_label(args))


def site_label(args: argparse.Namespace) -> str:
    return args.site_name or args.site_dir.resolve().name


def warm_clientapp(args: argparse.Namespace) -> bool:
    """Whether this SuperNode's ClientApp processes start warm: it starts them itself (``--isolation subprocess``;
    with ``process`` they come from ``nasofl-site clientapp-exec``) and ``--cold-clientapp`` is not given."""
    return args.isolation == "subprocess" and not args.cold_clientapp


def node_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of the SuperNode: :data:`NODE_ENV` plus the approved-apps gate for its ClientApp processes."""
    from client.approval import APPROVED_APPS_ENV, SITE_NAME_ENV
    from client.clientapp_gate import write_launcher

    gate = write_launcher(site_cache(args).resolve() / "clientapp-gate", warm=warm_clientapp(args))
    return {
        **NODE_ENV,
        APPROVED_APPS_ENV: str(args.approved_apps.resolve()),
        SITE_NAME_ENV: site_label(args),
        "PATH": f"{gate}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The SuperNode command line for this site (TLS + node authentication): Flower's ``flower-supernode``, run
    through :mod:`client.supernode_launch` (a shorter idle poll than Flower's fixed 3 s)."""
    cmd = [
        sys.executable,
        "-m",
        "client.supernode_launch",
        "--superlink",
        args.superlink,
        "--root-certificates",
        str(args.ca.resolve()),
        "--auth-supernode-private-key",
        str(args.key.resolve()),
        "--port",
        str(args.runtime_port),
        "--node-config",
        node_config(
            args.site_dir,
            site_cache(args),
            args.eval_only,
            args.site_name,
            args.salt,
            args.privacy_budget,
            args.pretraining,
        ),
    ]
    if args.max_retries is not None:
        cmd += ["--max-retries", str(args.max_retries)]
    if args.isolation == "process":
        secret = superexec_secret(site_cache(args))
        cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(secret.resolve())]
    return cmd


def validate_site(args: argparse.Namespace) -> bool:
    from client.validate_cmd import site_report

    salt = args.salt if args.salt is not None else site_salt(site_cache(args))
    report = site_report(args.site_dir, args.cache, salt, not args.no_progress and sys.stderr.isatty())
    if not report.ok:
        print(report.format_table(show_ids=False, max_problems=200))
        print(f"not joining: {args.site_dir} has blocking problems (see above); fix them and run again")
        return False
    print(report.format_table(show_ids=False, max_problems=20))
    return True


def run(args: argparse.Namespace) -> int:
    split_address(args.superlink)
    if args.check:
        ok, message = check_superlink(args.superlink, args.ca)
        print(("OK: " if ok else "FAILED: ") + message)
        return EXIT_OK if ok else EXIT_FAILED
    if args.site_dir is None:
        print(
            "nasofl-site join: SITE_DIR is required (or --check for a connection test only)", file=sys.stderr
        )
        return EXIT_USAGE
    if args.key is None:
        print("nasofl-site join: --key is required (private key from deploy/node-keys.sh)", file=sys.stderr)
        return EXIT_USAGE
    if args.approved_apps is None:
        print(
            "nasofl-site join: --approved-apps FILE is required: review the app, then "
            "`nasofl-site approve APP --approved-apps FILE` (only approved apps run at this site)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.salt == DEFAULT_SALT:
        raise ConfigError(
            f"--salt {DEFAULT_SALT!r} is the public default salt: anyone can reverse its pseudonyms by hashing "
            "candidate patient ids. Leave --salt out (the site's own random salt is used) or give a secret one"
        )
    for label, path in (("SITE_DIR", args.site_dir), ("--ca", args.ca), ("--key", args.key)):
        if not path.exists():
            raise ConfigError(f"{label} {str(path)!r} does not exist")
    if not args.site_dir.is_dir():
        raise ConfigError(f"SITE_DIR {str(args.site_dir)!r} is not a folder")
    from client.approval import read_approved

    if not read_approved(args.approved_apps):
        raise ConfigError(
            f"--approved-apps {args.approved_apps}: no approved app listed (nasofl-site approve)"
        )
    if not validate_site(args):
        return EXIT_FAILED
    cmd = supernode_command(args)
    env = node_env(args)
    if args.dry_run:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "PATH")
        print(f"would run (PATH starts with {env['PATH'].split(os.pathsep)[0]}):")
        print(shown + " " + " ".join(shlex.quote(c) for c in cmd))
        return EXIT_OK
    print("starting: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    os.environ.update(env)
    if warm_clientapp(args):
        from client.clientapp_gate import start_zygote

        start_zygote(Path(env["PATH"].split(os.pathsep)[0]))
    os.execvp(cmd[0], cmd)
    return EXIT_FAILED  # not reached
