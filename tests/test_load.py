"""A real explorer server on loopback: 20 concurrent clients (no failed request, flat memory), traversal attempts."""

from __future__ import annotations

import pandas as pd
import psutil
import pytest

from latentscope.dashboard.loadtest import TRAVERSAL_ATTEMPTS, drive, probe, refused

from reliability import note
from servers import free_port, live_server

pytestmark = pytest.mark.slow


@pytest.fixture
def server(explorer_scope, tmp_path):
    port = free_port()
    args = ["serve", str(explorer_scope), "--port", str(port), "--device", "cpu", "-q"]
    with live_server(args, port, tmp_path / "server.log") as running:
        yield running


def test_traversal_attempts_on_a_live_server_are_refused(server):
    answers = probe(server[0])
    assert len(answers) == len(TRAVERSAL_ATTEMPTS)
    let_through = {path: status for path, (status, body) in answers.items() if not refused(status, body)}
    assert not let_through, let_through
    note("traversal-live", attempts=len(answers), refused=len(answers) - len(let_through),
         statuses=sorted({status for status, _ in answers.values()}))


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
