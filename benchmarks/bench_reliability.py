"""Reliability and security in numbers (issue 8): bad inputs tried, crashes survived, traversal refused, load held.

Two parts:

1. The reliability tests run under pytest with ``LATENTSCOPE_RELIABILITY_LOG`` set, so each records what it
   tried (see ``tests/reliability.py``): the image-loader fuzzers (hypothesis), the table of bad command lines,
   the damaged scopes given to ``doctor``, the untrusted-file tests, and the crash tests that kill -9
   ``encode``, ``project`` and ``train`` (and ``score`` where that test exists) at seeded moments. The
   section counts those events and says whether each test file passed.
2. A live explorer server (``latentscope serve`` on loopback, the shipped digits model, a UMAP map): every
   traversal attempt of ``latentscope.dashboard.loadtest.TRAVERSAL_ATTEMPTS`` sent byte for byte, then
   concurrent clients hovering, inspecting and walking for a fixed time while the server's memory is sampled.

    python benchmarks/bench_reliability.py            # everything, writes the "reliability" section of RESULTS.md
    python benchmarks/bench_reliability.py --quick    # no crash tests, 5 s of load, prints only
    python benchmarks/bench_reliability.py --crash-rounds 5   # and the kill -9 tests 5 more times, other seeds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, whatever is installed
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the live-server helper the tests use
from reliability import LOG_ENV, SEED_OFFSET_ENV  # noqa: E402
from results import command_line, machine_line, write_section  # noqa: E402

TEST_FILES = {
    "hostile image files": ["tests/test_fuzz_images.py"],
    "bad command lines": ["tests/test_cli_validation.py"],
    "damaged scopes": ["tests/test_doctor.py"],
    "untrusted files": ["tests/test_untrusted.py"],
    "crashes": ["tests/test_crashes.py", "tests/test_crashes_score.py"],
}


def run_tests(log: Path, quick: bool) -> dict[str, dict]:
    """Run each group of test files with the event log on; return pass/fail, counts and time per group."""
    outcome = {}
    for group, files in TEST_FILES.items():
        present = [f for f in files if (ROOT / f).exists()]
        if not present:
            continue
        marker = ["-m", "not slow"] if quick else []
        started = time.perf_counter()
        passed, summary = run_pytest([*marker, *present], {LOG_ENV: str(log)}, group)
        outcome[group] = {"files": present, "passed": passed, "summary": summary, "seconds": time.perf_counter() - started}
    return outcome


def run_pytest(args: list[str], env: dict[str, str], name: str) -> tuple[bool, str]:
    """Run pytest on ``args`` with ``env`` added; print and return (passed, its summary line)."""
    process = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    summary = (process.stdout.strip().splitlines() or ["(no output)"])[-1].strip("= ")
    print(f"{name}: {summary}", flush=True)
    if process.returncode != 0:
        print(process.stdout[-4000:], file=sys.stderr)
    return process.returncode == 0, summary


def crash_soak(log: Path, rounds: int) -> list[dict]:
    """Run the crash tests ``rounds`` more times, each with its kill moments drawn from other seeds
    (``SEED_OFFSET_ENV``); the tests record each sequence in ``log``. Return pass/fail per round."""
    files = [f for f in TEST_FILES["crashes"] if (ROOT / f).exists()]
    outcome = []
    for round_number in range(1, rounds + 1):
        env = {LOG_ENV: str(log), SEED_OFFSET_ENV: str(100 * round_number)}
        passed, summary = run_pytest(["-k", "kill_9", *files], env, f"crash soak round {round_number}")
        outcome.append({"round": round_number, "passed": passed, "summary": summary})
    return outcome


def read_events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def build_scope(folder: Path) -> Path:
    """300 digits encoded with the shipped model and a UMAP map: what `latentscope demo` users serve."""
    from latentscope.datasets import write_digits
    from latentscope.ingest import encode
    from latentscope.projection import project

    scope = folder / "digits.scope"
    encode(write_digits(folder / "digits", limit=300), "builtin:digits", scope, progress=False)
    project(scope, progress=False, quality=False)
    return scope


def live_server(scope: Path, folder: Path, clients: int, seconds: float) -> dict:
    """Traversal attempts, then load, against one `latentscope serve` process on loopback."""
    import pandas as pd
    import psutil

    from latentscope.dashboard.loadtest import drive, probe, refused
    from servers import free_port, live_server

    ids = pd.read_parquet(scope / "maps" / "default.parquet")["id"].tolist()
    port = free_port()
    with live_server(["serve", str(scope), "--port", str(port), "--device", "cpu", "-q"], port,
                     folder / "server.log") as (base, process):
        answers = probe(base)
        drive(base, ids, clients=4, seconds=5)  # warm up: models loaded, caches filled
        server = psutil.Process(process.pid)
        samples = [server.memory_info().rss]
        result_box = {}
        started = time.perf_counter()
        import threading

        worker = threading.Thread(target=lambda: result_box.setdefault("r", drive(base, ids, clients=clients,
                                                                                    seconds=seconds, steps=12)))
        worker.start()
        while worker.is_alive():
            worker.join(timeout=1.0)
            samples.append(server.memory_info().rss)
        elapsed = time.perf_counter() - started
    result = result_box["r"]
    return {
        "traversal": [(path, status, refused(status, body)) for path, (status, body) in answers.items()],
        "load": {"clients": clients, "seconds": elapsed, "requests": result.requests, "failures": len(result.failures),
                 "failure_examples": result.failures[:3],
                 "p95": {kind: result.p95(kind) for kind in ("hover", "inspect", "walk", "walk-complete")},
                 "p95_all": result.p95(), "walks": len(result.latencies.get("walk-complete", [])),
                 "rss_start": samples[0], "rss_end": samples[-1], "rss_peak": max(samples)},
    }


def render(tests: dict, events: list[dict], live: dict, quick: bool, soak: list[dict] = ()) -> str:
    lines = ["## Reliability and security (issue 8)", "",
             f"Command: `{command_line()}`. Machine: {machine_line()}.", ""]
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        lines += [f"The machine was shared while this ran (load average {load:.1f} on {os.cpu_count()} cores): "
                  "times are longer than on an idle machine.", ""]

    lines += ["### Test files run", "", "| group | files | result | time |", "|---|---|---|---|"]
    for group, info in tests.items():
        lines.append(f"| {group} | {', '.join(f'`{f}`' for f in info['files'])} | "
                     f"{'passed' if info['passed'] else '**FAILED**'}: {info['summary']} | {info['seconds'] / 60:.1f} min |")

    by_kind: dict[tuple[str, str], int] = defaultdict(int)
    for event in events:
        if event["kind"] == "bad-input":
            by_kind[(event["what"], event["variant"])] += int(event.get("count", 1))
        elif event["kind"] == "untrusted":
            by_kind[("untrusted file", event["what"])] += 1
    lines += ["", "### Bad inputs tried", "",
              "Each was refused or recorded with a reason (the tests fail otherwise): images get an error in the "
              "manifest, command lines a one-line error with exit status 2 and nothing written, damaged scopes a "
              "doctor finding, untrusted files a refusal without running anything.", "",
              "| input | kind | tried |", "|---|---|---|"]
    for (what, detail), count in sorted(by_kind.items()):
        lines.append(f"| {what} | {detail} | {count:,} |")
    lines.append(f"| **all** | | **{sum(by_kind.values()):,}** |")

    crashes = [e for e in events if e["kind"] == "crash" and not e.get("seed_offset")]
    lines += ["", "### Crashes injected and survived", ""]
    if crashes:
        lines += ["Each command is killed with SIGKILL at 10 seeded random moments after start-up and at 6 seeded "
                  "commit boundaries (right before or after one of its `os.replace` calls), rerun after each kill, "
                  "then run to the end; the files must equal an uninterrupted run's, with no duplicate row and no "
                  "half-written file.", "",
                  "| command | kills planned | kills that landed (process died) | final result identical |",
                  "|---|---|---|---|"]
        for event in crashes:
            lines.append(f"| `{event['command']}` | {event['planned']} | {event['landed']} | "
                         f"{'yes' if tests.get('crashes', {}).get('passed') else 'see test result'} |")
    else:
        lines.append("Not run (`--quick`).")
    lines += soak_lines([e for e in events if e["kind"] == "crash" and e.get("seed_offset")], soak)
    for event in events:
        if event["kind"] == "crash-boundaries":
            lines.append(f"\n`{event['command']}`: a crash before each of its {event['boundaries']} commit boundaries "
                         f"left the old map with its old entry or the new with its new; mixed: {event['mixed']}.")
        if event["kind"] == "full-disk":
            lines.append(f"\nFull disk (ENOSPC) during `{event['command']}`'s commit: clear error, scope byte-identical "
                         "to before, and the rerun resumes from the checkpoints.")

    traversal = live["traversal"]
    lines += ["", "### Traversal attempts refused", "",
              f"Sent byte for byte to a live `latentscope serve` on loopback: {sum(r for *_, r in traversal)} of "
              f"{len(traversal)} refused (4xx, no file content).", "", "| request | status | refused |", "|---|---|---|"]
    for path, status, ok in traversal:
        lines.append(f"| `{path}` | {status} | {'yes' if ok else '**NO**'} |")
    offline = Counter(e["where"] for e in events if e["kind"] == "traversal")
    if offline:
        lines += ["", "Names read from files that try to leave their folder (tests on the library): " +
                  ", ".join(f"{where} {count}" for where, count in sorted(offline.items())) + ", all refused."]

    for event in events:
        if event["kind"] == "request-size":
            lines.append(f"\nA request body of {event['bytes'] / 2**20:.1f} MiB (over the 2 MiB bound): HTTP {event['status']}.")
        if event["kind"] == "escaping":
            lines.append(f"\nFile and folder names that are HTML with event handlers, shown in the {event['where']}: "
                         f"rendered as text, no script ran.")

    load = live["load"]
    p95 = load["p95"]
    lines += ["", "### Load held", "",
              "| clients | duration | requests | failed | walks finished | p95 hover | p95 inspect | p95 walk frame | "
              "p95 walk (start to last frame) | p95 all | server memory start / end / peak |",
              "|---|---|---|---|---|---|---|---|---|---|---|",
              f"| {load['clients']} | {load['seconds']:.0f} s | {load['requests']:,} | {load['failures']} | {load['walks']} | "
              f"{_ms(p95['hover'])} | {_ms(p95['inspect'])} | {_ms(p95['walk'])} | {_ms(p95['walk-complete'])} | "
              f"{_ms(load['p95_all'])} | {load['rss_start'] / 2**20:.0f} / {load['rss_end'] / 2**20:.0f} / "
              f"{load['rss_peak'] / 2**20:.0f} MiB |"]
    if load["failures"]:
        lines.append(f"\nFailures: {load['failure_examples']}")
    if quick:
        lines += ["", "(quick run: no crash tests and a short load.)"]
    return "\n".join(lines)


def soak_lines(sequences: list[dict], soak: list[dict]) -> list[str]:
    """The crash soak: the same kill -9 tests again with kill moments drawn from other seeds."""
    if not soak:
        return []
    failed = [r["round"] for r in soak if not r["passed"]]
    lines = ["", f"Crash soak (`--crash-rounds {len(soak)}`): the kill -9 tests again, {len(soak)} times, each with "
             "its kill moments drawn from other seeds (rounds that fail are listed below the table).", "",
             "| command | sequences | kills that landed | final results identical |", "|---|---|---|---|"]
    by_command: dict[str, list[dict]] = defaultdict(list)
    for event in sequences:
        by_command[event["command"]].append(event)
    for command, runs in sorted(by_command.items()):
        lines.append(f"| `{command}` | {len(runs)} | {sum(r['landed'] for r in runs)} | "
                     f"{'yes' if not failed else 'see the failed rounds'} |")
    if failed:
        lines += ["", "Failed rounds: " + "; ".join(f"{r['round']}: {r['summary']}" for r in soak if not r["passed"])]
    return lines


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the slow tests (crashes), 5 s of load, print only")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=45.0, help="load duration (at most 60)")
    parser.add_argument("--crash-rounds", type=int, default=0,
                        help="run the kill -9 tests this many more times with kill moments from other seeds")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else min(args.seconds, 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        folder = Path(tmp)
        log = folder / "events.jsonl"
        tests = run_tests(log, args.quick)
        soak = crash_soak(log, args.crash_rounds) if not args.quick else []
        events = read_events(log)
        scope = build_scope(folder)
        live = live_server(scope, folder, args.clients, seconds)
    markdown = render(tests, events, live, args.quick, soak)
    print(markdown)
    if not args.quick:
        write_section("reliability", markdown)


if __name__ == "__main__":
    main()
