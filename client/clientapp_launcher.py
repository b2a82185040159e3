"""The site's ``flwr-clientapp`` launcher: a warm ClientApp start through the zygote, or today's cold start.

    python -I -S client/clientapp_launcher.py SOCKET [flwr-clientapp arguments...]

Flower's SuperExec runs this (through the ``flwr-clientapp`` script of ``client.clientapp_gate.write_launcher``)
once per message. It runs with the standard library only (``-I -S``: a few milliseconds), connects to the site's
zygote (``client/clientapp_zygote.py``) on ``SOCKET`` and hands over its argv, environment, working folder and
stdin/stdout/stderr; the zygote's forked child runs the approved-apps gate and Flower's ClientApp. This process
forwards SIGTERM/SIGINT/SIGHUP to that child, waits for its end and exits with its status (or dies of its
signal), so SuperExec sees one ClientApp process as before.

When the zygote cannot be reached (no socket, refused, gone before starting the child) it logs a WARNING and
replaces itself with the cold start, ``python -m client.clientapp_gate ARGS``: the same gate, only slower.
"""

import json
import os
import signal
import socket
import struct
import sys
import time

#: Environment variables the gate reads to log how this ClientApp process started.
START_ENV, LAUNCHED_AT_ENV = "NASOFL_CLIENTAPP_START", "NASOFL_CLIENTAPP_LAUNCHED_AT"


def say(level: str, message: str) -> None:
    print(f"{level:<8}:      nasofl: {message}", file=sys.stderr, flush=True)


def in_folder(sock: socket.socket, path: str, action: str) -> None:
    """``sock.bind`` or ``sock.connect`` to ``path`` through its folder's descriptor: Unix socket addresses are
    limited to 107 bytes, deep cache folders are not."""
    folder, name = os.path.split(os.path.abspath(path))
    dirfd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    try:
        getattr(sock, action)(f"/proc/self/fd/{dirfd}/{name}")
    finally:
        os.close(dirfd)


def cold_start(args: list[str], launched_at: float) -> None:
    """Replace this process with today's cold ClientApp process (the gate, then Flower's ClientApp)."""
    os.environ[START_ENV], os.environ[LAUNCHED_AT_ENV] = "cold", repr(launched_at)
    os.execv(sys.executable, [sys.executable, "-m", "client.clientapp_gate", *args])


def read_line(conn: socket.socket, pending: bytearray) -> dict | None:
    """Next JSON line from the zygote, or None when it closed the connection."""
    while b"\n" not in pending:
        more = conn.recv(4096)
        if not more:
            return None
        pending += more
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return json.loads(line)


def wait_for_pid(pid: int) -> None:
    """Block until process ``pid`` (not our child) has ended."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    import select

    select.select([pidfd], [], [])
    os.close(pidfd)


def warm_start(path: str, args: list[str], launched_at: float) -> int:
    """Run the ClientApp as a child of the zygote; its exit code, or -1 when nothing was started (go cold)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending = bytearray()
    try:
        in_folder(conn, path, "connect")
        env = dict(os.environ, **{START_ENV: "warm", LAUNCHED_AT_ENV: repr(launched_at)})
        body = json.dumps({"argv": ["flwr-clientapp", *args], "env": env, "cwd": os.getcwd()}).encode()
        try:
            socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
            conn.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the zygote refused before reading it all: its reason is already on the way
        started = read_line(conn, pending)
    except OSError as err:
        say("WARNING", f"warm ClientApp start unavailable (zygote socket {path}: {err}); starting cold")
        return -1
    if started is None or "pid" not in started:
        why = "it closed the connection" if started is None else started.get("refused", started)
        say("WARNING", f"warm ClientApp start refused by the zygote on {path} ({why}); starting cold")
        return -1
    pid = int(started["pid"])
    say("INFO", f"warm ClientApp start: process {pid} forked by the zygote on {path}")

    def forward(signum: int, _frame) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        ended = read_line(conn, pending)
    except OSError:
        ended = None
    if ended is None:
        say(
            "ERROR",
            f"the zygote on {path} went away while ClientApp process {pid} runs: its exit status is lost",
        )
        wait_for_pid(pid)
        return 1
    if "signal" in ended:
        signal.signal(int(ended["signal"]), signal.SIG_DFL)
        os.kill(os.getpid(), int(ended["signal"]))
        return 128 + int(ended["signal"])
    return int(ended["exit"])


def main() -> None:
    launched_at = time.time()
    if len(sys.argv) < 2:
        say("ERROR", "usage: clientapp_launcher.py SOCKET [flwr-clientapp arguments...]")
        sys.exit(2)
    path, args = sys.argv[1], sys.argv[2:]
    code = warm_start(path, args, launched_at)
    if code < 0:
        cold_start(args, launched_at)
    sys.exit(code)


if __name__ == "__main__":
    main()
