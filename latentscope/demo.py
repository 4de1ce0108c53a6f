"""``latentscope demo``: the whole pipeline on scikit-learn's handwritten digits, with the shipped model.

The demo is a list of stages (:data:`STAGES`). Each stage is a function that
takes the :class:`DemoRun` and returns the lines it reports; it may store what
later stages need in ``run.results``. Adding a stage is one function and one
entry in the list. After the stages, :func:`run_demo` can serve the explorer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import InputError
from .runtime import cache_dir

log = logging.getLogger(__name__)

SHIPPED_MODEL = "builtin:digits"
DEMO_MAP = "default"


@dataclass
class DemoRun:
    """Settings of one demo run and what its stages produced."""

    workdir: Path
    retrain: bool = False
    device: str = "auto"
    progress: bool = True
    results: dict = field(default_factory=dict)

    @property
    def images(self) -> Path:
        return self.workdir / "digits"

    @property
    def model(self) -> str:
        return str(self.workdir / "model") if self.retrain else SHIPPED_MODEL

    @property
    def scope(self) -> Path:
        return self.workdir / ("digits-retrained.scope" if self.retrain else "digits.scope")


def write_images(run: DemoRun) -> list[str]:
    from .datasets import write_digits

    folder = write_digits(run.images)
    count = sum(1 for _ in folder.rglob("*.png"))
    return [f"images: {count} handwritten digits (scikit-learn) in {folder}"]


def train_model(run: DemoRun) -> list[str]:
    """Only with ``--retrain``: fit a new model on the digits, exactly as the shipped one was made."""
    if not run.retrain:
        return [f"model: {SHIPPED_MODEL} (shipped with latentscope; --retrain fits a new one)"]
    from .training import train

    command = f"latentscope train {run.images} --out {run.model} --seed 0"
    result = train(run.images, run.model, seed=0, device=run.device, overwrite=True, progress=run.progress, command=command)
    return ["model: retrained from scratch", *("  " + line for line in result.lines())]


def encode_images(run: DemoRun) -> list[str]:
    from .ingest import encode

    summary = encode(run.images, run.model, run.scope, device=run.device, progress=run.progress)
    run.results["scope"] = run.scope
    return ["encode:", *("  " + line for line in summary.lines())]


def project_latents(run: DemoRun) -> list[str]:
    from .projection import map_is_current, project

    if map_is_current(run.scope, DEMO_MAP):
        return [f"map: {DEMO_MAP!r} is up to date with the latents (reused)"]
    summary = project(run.scope, DEMO_MAP, progress=run.progress)
    return ["project:", *("  " + line for line in summary.lines())]


#: The demo's scoring setting, reduced to keep the demo to about a minute on two CPU cores: only level 0 (the
#: autoencoder round trip, one decoder call per image) with the calibrated heatmap and the content and gist terms
#: (one denoiser call per image for its features). 'latentscope score' defaults to levels 0 and 0.1 with
#: five DDIM steps and four draws at the noisy level (21 denoiser and 5 decoder calls per image).
DEMO_SCORE = dict(levels=(0.0,), reference_size=256)


def score_images(run: DemoRun) -> list[str]:
    from .anomaly import score, score_is_current, top_scores

    if score_is_current(run.scope, "default", **DEMO_SCORE):
        top = top_scores(run.scope, "default", 3)
        return ["score: 'default' is up to date with the images (reused); most anomalous: "
                + ", ".join(f"{p} ({s:.1f})" for p, s in zip(top["path"], top["score"]))]
    summary = score(run.scope, run.model, device=run.device, progress=run.progress, top=5, **DEMO_SCORE)
    note = ("  (quick demo setting: level 0 only, the round trip; 'latentscope score' adds noise level 0.1, "
            "5 DDIM steps, 4 draws)")
    return ["score:", *("  " + line for line in summary.lines()), note]


Stage = Callable[[DemoRun], list[str]]

#: The demo's stages, in order.
STAGES: list[tuple[str, Stage]] = [
    ("images", write_images),
    ("model", train_model),
    ("encode", encode_images),
    ("project", project_latents),
    ("score", score_images),
]


def default_workdir() -> Path:
    return Path(cache_dir()) / "demo"


def run_demo(workdir: str | Path | None = None, retrain: bool = False, device: str = "auto", progress: bool = True,
             report: Callable[[str], None] = log.info, serve: bool = False, port: int | None = None) -> DemoRun:
    """Run every stage in order, passing each report line to ``report`` as soon as the stage is done.

    With ``serve`` the explorer is served on 127.0.0.1:``port`` afterwards (until interrupted; without ``port``, on
    the first free port from 8050 on).
    """
    run = DemoRun(Path(workdir).expanduser().resolve() if workdir else default_workdir(), retrain, device, progress)
    if run.workdir.exists() and not run.workdir.is_dir():
        raise InputError(f"--workdir {run.workdir}: is a file; give a folder for the demo's images and scope")
    run.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name, stage in STAGES:
        stage_started = time.perf_counter()
        for line in stage(run):
            report(line)
        run.results.setdefault("seconds", {})[name] = round(time.perf_counter() - stage_started, 2)
    report(f"demo finished in {time.perf_counter() - started:.1f} s; work folder {run.workdir}")
    if serve:
        from .dashboard import serve as serve_dashboard

        serve_dashboard(run.scope, port=port, map_name=DEMO_MAP, model=run.model, device=device, announce=report)
    return run
