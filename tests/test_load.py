"""20 concurrent clients against a real explorer server on loopback: no failed request, flat memory."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import psutil
import pytest

from latentscope.dashboard.loadtest import drive

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(explorer_scope, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # a pipe nobody reads would fill up and block the server
    process = subprocess.Popen([sys.executable, "-m", "latentscope", "serve", str(explorer_scope), "--port", str(port),
                                "--device", "cpu", "-q"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(base + "_dash-layout", timeout=5)
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
    yield base, process
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_twenty_clients_no_failures_and_flat_memory(server, explorer_scope):
    base, process = server
    ids = pd.read_parquet(explorer_scope / "maps" / "default.parquet")["id"].tolist()
    drive(base, ids, clients=4, seconds=5)  # warm up: models loaded, caches filled
    rss = psutil.Process(process.pid)
    before = rss.memory_info().rss
    result = drive(base, ids, clients=20, seconds=25, steps=12)
    after = rss.memory_info().rss
    assert result.failures == [], result.failures[:5]
    assert result.requests > 200
    assert len(result.latencies.get("walk-complete", [])) >= 5
    assert after < before * 1.25 + 50e6, f"server memory grew from {before / 1e6:.0f} MB to {after / 1e6:.0f} MB"
