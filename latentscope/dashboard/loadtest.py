"""Drive a running explorer with concurrent clients, as browsers would: hover, inspect, walk; probe it with
path-traversal attempts.

Used by the load and security tests in the test suite and by ``benchmarks/bench_reliability.py``. Requests go
only to the given loopback URL; every loop is bounded in time and count.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import numpy as np

#: Paths that try to reach files outside what the explorer serves: raw, percent-encoded, double-encoded,
#: overlong UTF-8, backslashes, NUL bytes, absolute paths, and ids that are not in the manifest.
TRAVERSAL_ATTEMPTS = (
    "/thumb/../../etc/passwd",
    "/thumb/..%2F..%2Fetc%2Fpasswd",
    "/thumb/%2e%2e/%2e%2e/etc/passwd",
    "/thumb/%252e%252e%252fetc%252fpasswd",
    "/thumb/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/thumb/0.jpg/../../../etc/passwd",
    "/thumb/-1.jpg",
    "/thumb/99999.jpg",
    "/image/%2Fetc%2Fpasswd",
    "/image//etc/passwd",
    "/image/../../etc/passwd",
    "/image/..\\..\\etc\\passwd",
    "/image/1.png%00.jpg",
    "/recon/12345678.png",
    "/heatmap/..%2Fscope.json",
    "/info/abc",
    "/jobs/abcdefabcdef/walk.gif",
    "/jobs/../../etc/passwd",
    "/jobs/abcdefabcdef/..%2F..%2Fetc%2Fpasswd",
    "/assets/../../etc/passwd",
    "/assets/..%2f..%2f..%2fetc%2fpasswd",
    "/assets/%2e%2e%2f%2e%2e%2fscope.json",
    "/_dash-component-suites/dash/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/../../etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "/scope.json",
    "/latents.npy",
    "/images.parquet",
)


def probe(base: str, paths=TRAVERSAL_ATTEMPTS) -> dict[str, tuple[int, bytes]]:
    """Send each path byte for byte (no client-side normalisation) and return (status, body start) per path."""
    parts = urllib.parse.urlsplit(base)
    answers = {}
    for path in paths:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            connection.putrequest("GET", parts.path.rstrip("/") + path, skip_accept_encoding=True)
            connection.endheaders()
            response = connection.getresponse()
            answers[path] = (response.status, response.read(4096))
        finally:
            connection.close()
    return answers


def refused(status: int, body: bytes) -> bool:
    """A traversal attempt is refused when it gets a 4xx and nothing that looks like a system or scope file."""
    return 400 <= status < 500 and b"root:" not in body and b'"format"' not in body


@dataclass
class LoadResult:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, seconds: float) -> None:
        self.requests += 1
        self.latencies.setdefault(kind, []).append(seconds)

    def p95(self, kind: str | None = None) -> float:
        values = self.latencies.get(kind, []) if kind else [v for vs in self.latencies.values() for v in vs]
        return float(np.percentile(values, 95)) if values else float("nan")


class Client:
    """One simulated browser tab talking to the Dash server over HTTP."""

    def __init__(self, base: str, dependencies: list[dict], result: LoadResult, lock: threading.Lock):
        self.base = base.rstrip("/") + "/"
        self.callbacks = {d["output"]: d for d in dependencies}
        self.result = result
        self.lock = lock

    def _timed(self, kind: str, request: urllib.request.Request | str) -> bytes | None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        except OSError as exc:
            with self.lock:
                self.result.failures.append(f"{kind}: {exc}")
            return None
        elapsed = time.perf_counter() - started
        with self.lock:
            if status not in (200, 204):
                self.result.failures.append(f"{kind}: HTTP {status}")
            else:
                self.result.add(kind, elapsed)
        return body if status == 200 else None

    def callback(self, kind: str, output_contains: str, trigger: str, values: dict) -> dict | None:
        """POST one Dash callback the way the renderer does."""
        spec = next(d for o, d in self.callbacks.items() if output_contains in o and
                    any(f"{i['id']}.{i['property']}" == trigger for i in d["inputs"]))

        def filled(items):
            return [{**item, "value": values.get(f"{item['id']}.{item['property']}")} for item in items]

        payload = {
            "output": spec["output"],
            "outputs": [{"id": o.split(".")[0], "property": o.split(".")[1].split("@")[0]}
                        for o in spec["output"].strip(".").split("...")],
            "inputs": filled(spec["inputs"]),
            "state": filled(spec["state"]),
            "changedPropIds": [trigger],
        }
        request = urllib.request.Request(self.base + "_dash-update-component", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        body = self._timed(kind, request)
        return json.loads(body) if body else None

    def hover(self, image_id: int) -> None:
        self._timed("hover", f"{self.base}thumb/{image_id}.jpg")
        self._timed("hover", f"{self.base}info/{image_id}")

    def inspect(self, image_id: int) -> None:
        self.callback("inspect", "inspect-panel.children", "focus-id.data", {"focus-id.data": image_id, "panel-tabs.value": "inspect"})
        for route in ("image", "recon"):
            self._timed("inspect", f"{self.base}{route}/{image_id}.png")

    def walk(self, ids: list[int], steps: int, deadline: float) -> None:
        started = time.perf_counter()
        response = self.callback("walk", "walk-job.data", "walk-run.n_clicks", {
            "walk-run.n_clicks": 1, "walk-ids.data": ids, "walk-method.value": "slerp", "walk-steps.value": steps,
            "walk-options.value": [],
        })
        job, result = _output(response, "walk-job"), _output(response, "walk-result")  # a quick walk: its result
        if not job and not result:
            with self.lock:
                self.result.failures.append(f"walk: neither a job nor a result ({str(response)[:200]})")
            return
        while not result and time.monotonic() < deadline + 30:
            time.sleep(0.15)
            polled = self.callback("poll", "walk-result.data", "job-poll.n_intervals",
                                   {"job-poll.n_intervals": 1, "walk-job.data": job, "grid-job.data": None})
            if polled is None:
                return
            result = _output(polled, "walk-result")
        if not result:
            with self.lock:
                self.result.failures.append("walk: not finished in time")
            return
        for index in range(int(result["frames"])):
            self._timed("walk", f"{self.base}jobs/{result['job']}/frame-{index}.png")
        with self.lock:
            self.result.latencies.setdefault("walk-complete", []).append(time.perf_counter() - started)


def _output(response: dict | None, component: str):
    """The data a Dash callback response gives ``component`` (None when it gives none)."""
    return ((response or {}).get("response", {}).get(component, {}) or {}).get("data")


def drive(base: str, ids: list[int], clients: int = 20, seconds: float = 30.0, seed: int = 0,
          walk_every: int = 6, steps: int = 24) -> LoadResult:
    """Run ``clients`` concurrent clients for ``seconds``; each loops hover, inspect and, now and then, a walk."""
    dependencies = json.loads(urllib.request.urlopen(base.rstrip("/") + "/_dash-dependencies", timeout=30).read())
    result, lock = LoadResult(), threading.Lock()
    deadline = time.monotonic() + seconds

    def run(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = Client(base, dependencies, result, lock)
        round_ = 0
        while time.monotonic() < deadline:
            client.hover(rng.choice(ids))
            client.inspect(rng.choice(ids))
            if round_ % walk_every == index % walk_every:
                client.walk(rng.sample(ids, 2), steps, deadline)
            round_ += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    return result
