"""Issue 14: 'fusebox --help' loads nothing heavy; progress fits an 80-column terminal (pseudo-terminal),
redraws in place, and the Ctrl-C message starts a line of its own."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, subprocess_env

HEAVY = ("arq", "redis", "httpx", "aiohttp", "pydantic", "pydantic_settings", "msgspec", "rich", "sentry_sdk")

_HELP_IMPORTS = """
import sys
from producer.cli import build_parser
for argv in (["--help"], ["submit", "--help"], ["breakers", "--help"], ["usage", "--help"]):
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pass
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_help_imports_no_heavy_module(settings):
    p = subprocess.run(
        [PYTHON, "-c", _HELP_IMPORTS],
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.strip().splitlines()[-1].split())
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "shared" not in loaded and "worker" not in loaded


_CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


def _screen_lines(raw: bytes) -> list[str]:
    """Every run of text written from the start of a line (split at CR/LF, escape sequences removed)."""
    text = _CSI.sub(b"", raw).decode(errors="replace")
    return [seg for seg in re.split(r"[\r\n]", text)]


def _read_until(fd: int, deadline: float, stop: bytes | None = None) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if stop is not None and stop in out:
            break
    return out


def _terminal_signals() -> None:
    """In the child: Ctrl-C as a shell gives it. A test runner's worker process may ignore SIGINT
    (seen in an xdist worker late in the suite: /proc SigIgn had it), and an ignored signal stays
    ignored across exec, so the child would never see the keypress."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _sig_state(pid: int) -> str:
    try:
        return " ".join(
            ln.strip() for ln in open(f"/proc/{pid}/status") if ln.startswith(("SigBlk", "SigIgn"))
        )
    except OSError:
        return "?"


def test_progress_fits_80_columns_and_ctrl_c_gets_its_own_line(settings, tmp_path: Path):
    n = 400
    lines = [
        json.dumps({"custom_id": f"a-rather-long-custom-id-{i:05d}", "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "simulated/x", "messages": [{"role": "user", "content": "hi"}]}})
        for i in range(n)
    ]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    # slow simulated calls, two slots: the batch would take ~100 s, so it is always still running when
    # Ctrl-C comes, however fast or busy the machine (the test interrupts it after a few redraws)
    (tmp_path / "fusebox.toml").write_text("[simulated]\nlatency_ms = 500\n[worker]\nmax_jobs = 2\n")
    env = subprocess_env(settings, COLUMNS="80", LINES="24", TERM="xterm-256color", PYTHONFAULTHANDLER="1")
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "run", str(src), "-o", str(tmp_path / "out.jsonl")],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path, start_new_session=True,
        preexec_fn=_terminal_signals,
    )  # fmt: skip
    os.close(slave)
    try:
        # wait until the bar has been drawn (and redrawn) with some lines done, then press Ctrl-C
        raw = _read_until(master, time.monotonic() + 120, stop=b"running")
        raw += _read_until(master, time.monotonic() + 1.5)
        os.killpg(proc.pid, signal.SIGINT)
        raw += _read_until(master, time.monotonic() + 60, stop=b"interrupted")
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler dumps every thread's stack
            sigs = _sig_state(proc.pid)
            proc.send_signal(signal.SIGABRT)
            raw += _read_until(master, time.monotonic() + 5)
            pytest.fail(
                f"no exit after Ctrl-C ({sigs}):\n" + _CSI.sub(b"", raw).decode(errors="replace")[-6000:]
            )
        raw += _read_until(master, time.monotonic() + 0.5)  # what it wrote after the message
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = _CSI.sub(b"", raw).decode(errors="replace")
    if os.environ.get("FUSEBOX_TEST_DUMP"):
        Path(os.environ["FUSEBOX_TEST_DUMP"]).write_bytes(raw)
    assert rc == 130, text
    assert "running" in text, text
    too_long = [seg for seg in _screen_lines(raw) if len(seg) > 80]
    assert not too_long, too_long
    # the interruption message starts at column 0 of a fresh line, never after the bar on its line
    i = text.index("interrupted")
    assert text[i - 1] == "\n", repr(text[max(0, i - 100) : i + 20])
