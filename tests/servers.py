"""Start a latentscope command that serves the explorer in a subprocess, for tests that talk to a live server."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(args: list[str], port: int, log_path: Path, timeout: float = 120):
    """Run ``latentscope ARGS`` until its explorer answers on ``port``; yield (base URL, process); stop it afterwards.

    Output goes to ``log_path``: a pipe nobody reads would fill up and block the server.
    """
    base = f"http://127.0.0.1:{port}/"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "latentscope", *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(base, process, log_path, timeout)
            yield base, process
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_until_up(base: str, process, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(base + "_dash-layout", timeout=5)
            return
        except OSError:
            assert process.poll() is None, f"exited with {process.returncode}: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no server after {timeout} s: {log_path.read_text()[-2000:]}"
            time.sleep(0.3)
