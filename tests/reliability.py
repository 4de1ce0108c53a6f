"""Tools for the reliability tests: crash injection in child processes, and a log the reliability benchmark reads.

A command under test runs in a child process (``python -c PRELUDE + CODE ARGS``).
The prelude imports this module and calls :func:`arm`, which

* counts ``os.replace`` calls: every atomic write and every commit of
  latentscope ends in one, so the count enumerates the commit boundaries;
* with ``LATENTSCOPE_CRASH_AT_REPLACE=N:before`` (or ``:after``) kills the
  process with SIGKILL right before (after) the N-th of them, which puts a
  crash exactly on a commit boundary, where a time-based kill rarely lands.

The command calls :func:`ready` once its imports are done, so that kills
timed from the start land in the work rather than in ``import torch``.

:func:`note` appends one JSON line per event (inputs tried, crashes injected,
attempts refused) to the file named by ``LATENTSCOPE_RELIABILITY_LOG`` when
that is set; ``benchmarks/bench_reliability.py`` runs the tests with it and
tabulates the events.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LOG_ENV = "LATENTSCOPE_RELIABILITY_LOG"
SEED_OFFSET_ENV = "LATENTSCOPE_CRASH_SEED_OFFSET"
READY_ENV = "LATENTSCOPE_CRASH_READY"
COUNT_ENV = "LATENTSCOPE_CRASH_COUNT"
AT_REPLACE_ENV = "LATENTSCOPE_CRASH_AT_REPLACE"
KILLED = -signal.SIGKILL

PRELUDE = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import reliability
reliability.arm()
"""


def note(kind: str, **fields) -> None:
    """Record one event for the reliability benchmark (a no-op unless LATENTSCOPE_RELIABILITY_LOG is set).

    Kinds and their fields: ``bad-input`` (what, variant, count), ``untrusted`` (what), ``traversal`` (where,
    attempt), ``crash`` (command, planned, landed), ``crash-boundaries`` (command, boundaries, mixed),
    ``full-disk`` (command), ``request-size`` (bytes, status), ``escaping`` (where).
    """
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, **fields}) + "\n")


# ---------------------------------------------------------------------- in the child


def arm() -> None:
    spec = os.environ.get(AT_REPLACE_ENV, "")
    target, when = (int(spec.split(":")[0]), spec.split(":")[1]) if spec else (0, "")
    real_replace = os.replace
    count = 0

    def replace(src, dst, **kwargs):
        nonlocal count
        count += 1
        if count == target and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, **kwargs)
        if count == target and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    counter = os.environ.get(COUNT_ENV)
    if counter:
        atexit.register(lambda: Path(counter).write_text(str(count)))


def ready() -> None:
    marker = os.environ.get(READY_ENV)
    if marker:
        Path(marker).touch()


# ---------------------------------------------------------------------- in the test


@dataclass
class Outcome:
    returncode: int
    work_seconds: float  # from ready() to exit (or kill)
    replaces: int  # os.replace calls of a run that exited normally
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == KILLED


def run_child(code: str, args, workdir: Path, *, kill_after: float | None = None, kill_at_replace: tuple[int, str] | None = None,
              timeout: float = 600) -> Outcome:
    """Run ``code`` with ``args`` in a fresh interpreter; kill -9 it ``kill_after`` seconds after it is ready, or at a replace."""
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    ready_file, count_file, err_file = (workdir / f"{stamp}.{what}" for what in ("ready", "count", "err"))
    env = {**os.environ, READY_ENV: str(ready_file), COUNT_ENV: str(count_file),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop(AT_REPLACE_ENV, None)
    if kill_at_replace:
        env[AT_REPLACE_ENV] = f"{kill_at_replace[0]}:{kill_at_replace[1]}"
    with open(err_file, "w+") as err:
        process = subprocess.Popen([sys.executable, "-c", PRELUDE + code, *map(str, args)], stdout=subprocess.DEVNULL,
                                   stderr=err, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while not ready_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.monotonic()
        try:
            process.wait(timeout=kill_after if kill_after is not None else max(1.0, deadline - started))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        seconds = time.monotonic() - started
        err.seek(0)
        stderr = err.read()
    replaces = int(count_file.read_text()) if count_file.exists() else 0
    for path in (ready_file, count_file, err_file):
        path.unlink(missing_ok=True)
    return Outcome(process.returncode, seconds, replaces, stderr)


@dataclass
class CrashLog:
    """What one crash sequence did: the kills planned, those that landed, and the final run."""

    command: str
    planned: list = field(default_factory=list)
    landed: int = 0
    final: Outcome | None = None


def crash_sequence(command: str, code: str, args, workdir: Path, *, seed: int, duration: float, replaces: int,
                   start_over, check, kills: int = 10, time_share: float = 0.6, max_runs: int = 40) -> CrashLog:
    """Kill -9 the command at seeded random moments, rerunning after each, until ``kills`` kills have landed.

    A kill is drawn as a time after the child is ready (with probability
    ``time_share``) or as a commit boundary (right before or after one of the
    ``os.replace`` calls), uniformly within the work an uninterrupted run
    (``duration`` seconds, ``replaces`` commits) still has left by a rough
    estimate, so that most kills land in work. Each rerun resumes from what the
    killed runs left, as a user rerunning the command would. A rerun that
    finishes before its kill is compared with the uninterrupted run
    (``check()``), and ``start_over()`` restores the starting state so that
    later kills meet work again. The last run goes to the end and is checked too.
    """
    offset = int(os.environ.get(SEED_OFFSET_ENV, "0"))  # the reliability benchmark's crash soak draws other moments
    rng = random.Random(seed + offset)
    log = CrashLog(command)
    done = 0.0  # estimated fraction of the work behind us since the last start
    while log.landed < kills and len(log.planned) < max_runs:
        left = max(0.1, 1.0 - done)
        if rng.random() < time_share:
            how, when = "time", round(rng.uniform(0.0, duration * left), 3)
            share = when / duration
        else:
            how, when = "replace", (rng.randint(1, max(1, round(replaces * left))), rng.choice(("before", "after")))
            share = when[0] / max(1, replaces)
        log.planned.append((how, when))
        outcome = run_child(code, args, workdir, kill_after=when if how == "time" else None,
                            kill_at_replace=when if how == "replace" else None)
        if outcome.killed:
            log.landed += 1
            done += share
            continue
        assert outcome.returncode == 0, f"{command} failed after a crash ({how} {when}):\n{outcome.stderr[-3000:]}"
        check()
        start_over()
        done = 0.0
    log.final = run_child(code, args, workdir)
    assert log.final.returncode == 0, f"{command}: the final rerun failed:\n{log.final.stderr[-3000:]}"
    check()
    note("crash", command=command, planned=len(log.planned), landed=log.landed, seed=seed + offset, seed_offset=offset)
    return log


def leftovers(folder: Path) -> list[Path]:
    """Half-written or uncommitted files under ``folder``."""
    return sorted(p for p in folder.rglob("*") if p.name.endswith((".tmp", ".next")) or p.name.startswith("commit-"))


# ---------------------------------------------------------------------- crashes on commit boundaries, in process


class SimulatedCrash(BaseException):
    """Stands for kill -9: nothing after it runs (it is no Exception, so no handler catches it)."""


def crash_before_each_replace(original: Path, work_root: Path, run, state, old, new) -> int:
    """For k = 1, 2, ...: copy ``original``, run ``run(copy)`` with a crash before its k-th ``os.replace``, and
    check that ``state(copy)`` (read after reopening, which finishes interrupted commits) equals ``old`` or
    ``new``, never a mix; stop when a run completes. Returns the number of boundaries crashed on."""
    real_replace = os.replace
    boundary, outcomes = 0, []
    while True:
        boundary += 1
        work = work_root / f"crash-{boundary}"
        shutil.copytree(original, work)
        calls = 0

        def crash_at_boundary(src, dst, **kwargs):
            nonlocal calls
            calls += 1
            if calls == boundary:
                raise SimulatedCrash
            return real_replace(src, dst, **kwargs)

        os.replace = crash_at_boundary
        try:
            run(work)
            finished = True
        except SimulatedCrash:
            finished = False
        finally:
            os.replace = real_replace
        got = state(work)
        assert got in (old, new), f"a crash before os.replace call {boundary} left a state that mixes two runs"
        assert not leftovers(work)
        outcomes.append("new" if got == new else "old")
        shutil.rmtree(work)
        if finished:
            break
    assert "old" in outcomes and outcomes[-1] == "new"
    return boundary - 1
