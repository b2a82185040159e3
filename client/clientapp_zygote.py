"""The site's warm ClientApp start: one pre-started process that forks each ClientApp process behind the gate.

    python -m client.clientapp_zygote SOCKET --parent-pid PID

Flower 1.42's SuperExec starts one fresh ``flwr-clientapp`` process per message; a cold one spends seconds
importing Flower's ClientApp runtime, torch, torchvision and segmentation_models_pytorch before it asks for its
task. This process (the "zygote") imports those third-party modules once (:data:`PRELOAD`), then listens on the
Unix socket ``SOCKET`` (inside the site's 0700 cache folder). The site's ``flwr-clientapp`` launcher
(``client/clientapp_launcher.py``) connects, sends its argv, environment, working folder and its stdin, stdout
and stderr (SCM_RIGHTS); the zygote checks that the peer runs under its own uid (SO_PEERCRED; any other uid is
refused), forks, and the child runs exactly :func:`client.clientapp_gate.main` with them: the FAB's SHA-256 is
checked against the approved-apps file first, then Flower's ClientApp runs, as in a cold start. The zygote
reports the child's pid, then its exit status, which the launcher exits with; SuperExec sees the same process
life cycle. A launcher that goes away takes its child with it (SIGTERM).

Invariants:
- nasofl's own packages (client, shared, server, simulations) are not preloaded for the app: the child's gate
  forgets them (``forget_installed_packages``) before Flower imports the approved FAB, as a cold process does;
- fork safety: the zygote runs no torch op, no Python thread, opens no gRPC channel or HTTP client, and never
  initialises CUDA (each fork is refused otherwise); the native BLAS thread pools of numpy's and scipy's OpenBLAS
  stop at fork by their own ``pthread_atfork`` handlers;
- what the preloaded libraries read from the environment when they load (OMP_NUM_THREADS, FLWR_LOG_LEVEL) is the
  zygote's, the environment ``join`` / ``clientapp-exec`` started with, which is also SuperExec's; the rest of the
  child's environment is the launcher's;
- the zygote stops when the process that started it (``--parent-pid``: ``nasofl-site join`` / ``clientapp-exec``,
  which then become flower-supernode / flower-superexec under the same pid) is gone, and removes its socket.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from client.clientapp_launcher import in_folder

#: Third-party modules every ClientApp of this site imports; imported once here, shared by every fork. Not opacus:
#: its import calls ``logging.basicConfig`` (a root handler), which would print every Flower log line of every
#: ClientApp twice, DEBUG lines included; only the studies with local DP import it (1 s).
PRELOAD = (
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supernode.cli.flwr_clientapp",
    "numpy",
    "torch",
    "torchvision",
    "segmentation_models_pytorch",
    "scipy.ndimage",
    "scipy.stats",
)
#: nasofl's own packages: never preloaded for the app (the approved FAB brings its own copy).
OWN_PACKAGES = ("client", "shared", "server", "simulations")
#: Largest request (argv + environment) a launcher may send.
MAX_REQUEST_BYTES = 1 << 20
#: File descriptors a request carries: the launcher's stdin, stdout and stderr.
STDIO_FDS = 3


def say(level: str, message: str) -> None:
    print(f"{level:<8}:      nasofl zygote: {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    pid: int
    pidfd: int
    conn: socket.socket


def peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


def reply(conn: socket.socket, **fields: object) -> None:
    conn.sendall(json.dumps(fields).encode() + b"\n")


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """One launcher request: ``(4-byte length, JSON)`` with its stdio descriptors on the first bytes."""
    conn.settimeout(10.0)
    head, fds, _flags, _addr = socket.recv_fds(conn, 4, STDIO_FDS)
    try:
        while len(head) < 4:
            more = conn.recv(4 - len(head))
            if not more:
                raise ValueError("connection closed inside the request header")
            head += more
        (size,) = struct.unpack("!I", head)
        if size > MAX_REQUEST_BYTES:
            raise ValueError(f"request of {size} bytes (most {MAX_REQUEST_BYTES})")
        body = b""
        while len(body) < size:
            more = conn.recv(min(65536, size - len(body)))
            if not more:
                raise ValueError("connection closed inside the request")
            body += more
        request = json.loads(body)
        if len(fds) != STDIO_FDS or not isinstance(request.get("argv"), list):
            raise ValueError(f"expected argv and {STDIO_FDS} descriptors, got {len(fds)} descriptors")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def fork_unsafe_reason() -> str | None:
    """Why forking now would be unsafe, or None."""
    if threading.active_count() != 1:
        return f"{threading.active_count()} Python threads are running"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in the zygote"
    return None


def run_child(request: dict, fds: list[int], keep_closed: list[int]) -> None:
    """In the forked child: become the launcher's ClientApp process and run the gate; never returns."""
    code = 1
    try:
        for fd in keep_closed:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh Python process
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = [str(a) for a in request["argv"]]
        if "numpy" in sys.modules:  # a cold process seeds numpy's global generator from fresh entropy
            sys.modules["numpy"].random.seed()
        from client.clientapp_gate import main

        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    except BaseException:  # the child must never return into the zygote's loop
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class Zygote:
    def __init__(self, listener: socket.socket, parent_pid: int) -> None:
        self.listener, self.parent_pid = listener, parent_pid
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, Child] = {}  # by pidfd
        self.stopping = False

    def serve(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        while not self.stopping:
            for key, _mask in self.selector.select(timeout=1.0):
                try:
                    if key.data == "accept":
                        self.accept()
                    elif key.data == "exit":
                        self.reap(key.fd)
                    else:  # the launcher's connection (it sends nothing more): readable means it went away
                        self.launcher_gone(key.data)
                except OSError as err:  # one launcher's broken connection must not stop the zygote
                    say("WARNING", f"a launcher connection failed: {err}")
            if os.getppid() != self.parent_pid:
                say("INFO", f"the process that started it (pid {self.parent_pid}) is gone: stopping")
                return

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        uid = peer_uid(conn)
        if uid != os.getuid():
            say("ERROR", f"REFUSED a connection from uid {uid} (only uid {os.getuid()} may start ClientApps)")
            with conn:
                reply(conn, refused=f"uid {uid} is not the zygote's uid {os.getuid()}")
            return
        try:
            request, fds = read_request(conn)
        except (OSError, ValueError) as err:
            say("ERROR", f"bad request from a launcher: {err}")
            conn.close()
            return
        unsafe = fork_unsafe_reason()
        if unsafe is not None:
            say("ERROR", f"not forking: {unsafe}; the launcher starts cold")
            for fd in fds:
                os.close(fd)
            with conn:
                reply(conn, refused=f"zygote not fork-safe: {unsafe}")
            return
        sys.stdout.flush()
        sys.stderr.flush()
        inherited = [self.listener.fileno(), conn.fileno(), self.selector_fd()]
        inherited += [c.pidfd for c in self.children.values()] + [
            c.conn.fileno() for c in self.children.values()
        ]
        pid = os.fork()
        if pid == 0:
            run_child(request, fds, [fd for fd in inherited if fd >= 0])
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        child = Child(pid, pidfd, conn)
        self.children[pidfd] = child
        self.selector.register(pidfd, selectors.EVENT_READ, "exit")
        self.selector.register(conn, selectors.EVENT_READ, child)
        try:
            reply(conn, pid=pid)
        except OSError:
            self.launcher_gone(child)

    def selector_fd(self) -> int:
        fileno = getattr(self.selector, "fileno", None)
        return fileno() if fileno is not None else -1

    def reap(self, pidfd: int) -> None:
        child = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        with contextlib.suppress(KeyError):  # already unregistered when its launcher went away
            self.selector.unregister(child.conn)
        _, status = os.waitpid(child.pid, 0)
        try:
            if os.WIFSIGNALED(status):
                reply(child.conn, signal=os.WTERMSIG(status))
            else:
                reply(child.conn, exit=os.waitstatus_to_exitcode(status))
        except OSError:
            pass  # the launcher went away in the meantime
        child.conn.close()
        os.close(pidfd)

    def launcher_gone(self, child: Child) -> None:
        """The launcher closed its connection before its child ended: the child goes too (SIGTERM)."""
        if child.pidfd in self.children:
            say("WARNING", f"the launcher of ClientApp process {child.pid} went away: stopping it (SIGTERM)")
            self.selector.unregister(child.conn)
            try:
                signal.pidfd_send_signal(child.pidfd, signal.SIGTERM)
            except ProcessLookupError:
                pass


def preload(names: tuple[str, ...]) -> None:
    """Import ``names``; refuse if that imported any of nasofl's own packages, configured the root logger (every
    ClientApp would log differently from a cold one) or left the zygote fork-unsafe."""
    before, root_handlers = set(sys.modules), list(logging.getLogger().handlers)
    for name in names:
        importlib.import_module(name)
    if logging.getLogger().handlers != root_handlers:
        raise RuntimeError(
            f"preloading {', '.join(names)} added a root logging handler ({logging.getLogger().handlers}): a "
            "ClientApp forked from here would log differently from a cold one; leave that module out of --preload"
        )
    own = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in OWN_PACKAGES)
    if own:
        raise RuntimeError(
            f"preloading {', '.join(names)} imported nasofl's own {', '.join(own)}: the app's "
            "own code must come from its approved FAB, leave those modules out of --preload"
        )
    unsafe = fork_unsafe_reason()
    if unsafe is not None:
        raise RuntimeError(f"after importing {', '.join(names)}: {unsafe}: cannot fork ClientApps safely")


def listen(path: Path) -> socket.socket:
    """Bind ``path`` (a stale socket there is replaced) in a folder only this uid can enter."""
    folder = path.parent
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise PermissionError(
            f"{folder}: must be owned by uid {os.getuid()} with mode 0700 (it holds the socket)"
        )
    if path.is_socket():
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    in_folder(listener, str(path), "bind")
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", type=Path, help="the Unix socket to listen on (in the site's 0700 cache)")
    parser.add_argument("--parent-pid", type=int, required=True, help="stop when this process is gone")
    parser.add_argument(
        "--preload", default=",".join(PRELOAD), help=f"modules to import once (default {','.join(PRELOAD)})"
    )
    args = parser.parse_args(argv)
    # bound first: a launcher that connects while the imports run waits for them instead of starting cold
    listener = listen(args.socket)
    started = time.monotonic()
    zygote = Zygote(listener, args.parent_pid)

    def stop(signum, _frame) -> None:
        zygote.stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        preload(tuple(n for n in args.preload.split(",") if n))
        say("INFO", f"ready on {args.socket} (imports took {time.monotonic() - started:.1f} s)")
        zygote.serve()
    finally:
        listener.close()
        args.socket.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
