"""Long work (decoding walks, mosaics) in background threads, polled by the page for progress.

The model lives in the server process, so jobs run in threads beside it rather
than in Dash's process-based background callbacks (which would load the model
again for every job). Finished jobs are kept for a while so that a download
button can fetch their files, then dropped so memory stays flat.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

KEEP_SECONDS = 15 * 60
MAX_JOBS = 64


@dataclass
class Job:
    id: str
    kind: str
    done: int = 0
    total: int = 1
    message: str = "queued"
    state: str = "queued"  # queued | running | done | error
    result: Any = None
    error: str = ""
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the job to end (done or failed); True when it has."""
        return self._ended.wait(max(0.0, seconds))

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.done, self.total = int(done), max(1, int(total))
        if message:
            self.message = message

    def status(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "message": self.message,
            "error": self.error,
        }


class JobManager:
    """Runs callables ``fn(job, *args)`` in a small thread pool; jobs are looked up by id."""

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latentscope-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: Callable[..., Any], *args: Any) -> Job:
        job = Job(id=uuid.uuid4().hex[:12], kind=kind)
        with self._lock:
            self._prune()
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, fn, args)
        return job

    def run_now(self, kind: str, fn: Callable[..., Any], *args: Any) -> Job:
        """Run in the calling thread (for quick work and tests) but record it like a job."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind)
        with self._lock:
            self._prune()
            self._jobs[job.id] = job
        self._run(job, fn, args)
        return job

    def _run(self, job: Job, fn: Callable[..., Any], args: tuple) -> None:
        job.state, job.message = "running", "working"
        try:
            job.result = fn(job, *args)
            job.state, job.message = "done", "done"
            job.done = job.total
        except Exception as exc:  # reported to the page, never raised in the server
            job.state, job.error = "error", f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        finally:
            job.finished = time.monotonic()
            job._ended.set()

    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(str(job_id))

    def _prune(self) -> None:
        now = time.monotonic()
        stale = [k for k, j in self._jobs.items() if j.finished is not None and now - j.finished > KEEP_SECONDS]
        for key in stale:
            del self._jobs[key]
        finished = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished)
        while len(self._jobs) >= MAX_JOBS and finished:
            del self._jobs[finished.pop(0).id]

    def __len__(self) -> int:
        return len(self._jobs)
