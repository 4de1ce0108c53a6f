"""20 concurrent clients against a real explorer server on loopback: no failed request, flat memory."""

from __future__ import annotations

import pandas as pd
import psutil
import pytest

from latentscope.dashboard.loadtest import drive
from servers import free_port, live_server

pytestmark = pytest.mark.slow


@pytest.fixture
def server(explorer_scope, tmp_path):
    port = free_port()
    args = ["serve", str(explorer_scope), "--port", str(port), "--device", "cpu", "-q"]
    with live_server(args, port, tmp_path / "server.log") as running:
        yield running


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
