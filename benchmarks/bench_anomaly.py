"""Anomaly scores (issue 6): the default diffusion score and every baseline on both protocols, cost against quality,
and the scorer's throughput against its bare model calls. Writes the "anomaly" section of benchmarks/RESULTS.md.

    python benchmarks/bench_anomaly.py            # every task whose model is cached (trains the missing ones: slow)
    python benchmarks/bench_anomaly.py --quick    # small pools, for a smoke run

Models come from ``latentscope.train`` on each task's normal training split only (``benchmarks/anomaly_data.py``)
and are cached under ``benchmarks/data/anomaly/``. Reconstruction errors of the diffusion score are cached there
too, one file per (task, split, level, steps, draws): the default score and every point of the cost / quality sweep
are read off the same measurements (noise depends only on the seed and the image id, so a level measured alone
equals the same level measured together with others).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.anomaly_data import (MODEL_DIR, TASK_SIZES, Task, digits_task, icons_name, icons_task,  # noqa: E402
                                     photos_name, photos_task)
from benchmarks.results import command_line, machine_line, write_section  # noqa: E402
from latentscope.anomaly import DEFAULT_DRAWS, DEFAULT_LEVELS, DEFAULT_STEPS, Batch, DiffusionScore  # noqa: E402
from latentscope.anomaly.diffusion import DEFAULT_TERMS  # noqa: E402
from latentscope.anomaly.evaluate import Case, Pool, case_metrics, defect_case, semantic_cases  # noqa: E402
from latentscope.anomaly.reconstruct import LevelErrors, Reconstructor  # noqa: E402
from latentscope.anomaly.stage import build_method  # noqa: E402
from latentscope.codec import Codec  # noqa: E402
from latentscope.denoiser import Denoiser  # noqa: E402
from latentscope.training import RECIPE_VERSION  # noqa: E402

log = logging.getLogger("bench_anomaly")

BASELINES = ("roundtrip", "knn-latent", "iforest-latent", "pca-pixel", "knn-pixel")
ERRORS_DIR = MODEL_DIR / "errors"
SEED = 0


# --------------------------------------------------------------------------- data


def weights_digest(model: Path) -> str:
    """Changes whenever the model is retrained, so errors cached for an earlier model are never reused."""
    digest = hashlib.sha256()
    for weights in sorted(model.glob("*/*.safetensors")):
        digest.update(weights.read_bytes())
    return digest.hexdigest()[:12]


class Prepared:
    """One task's model, reference sample and test pool (normal test images, held-out classes, defect copies)."""

    def __init__(self, task: Task, reference_size: int, max_normal: int, max_per_class: int):
        self.task = task
        model = str(task.ensure_model())
        self.codec = Codec.from_pretrained(model, device="cpu")
        self.denoiser = Denoiser.from_pretrained(model, device="cpu")
        rng = np.random.default_rng([SEED, 11])
        self.train = task.train
        ref_rows = np.sort(rng.choice(len(task.train), min(reference_size, len(task.train)), replace=False))
        self.reference_rows = ref_rows
        normal = task.test_normal[np.sort(rng.choice(len(task.test_normal), min(max_normal, len(task.test_normal)), replace=False))]
        self.pool = Pool(np.zeros((0, *task.train.shape[1:]), np.uint8))
        normal_rows = self.pool.add(normal)
        chosen = {}
        for name, images in task.anomalies.items():
            keep = np.sort(rng.choice(len(images), min(max_per_class, len(images)), replace=False))
            chosen[name] = images[keep]
        semantic_cases(self.pool, normal_rows, chosen)
        defect_case(self.pool, normal_rows, seed=SEED)
        self.train_batch = Batch(task.train, self.codec.encode_pixels(task.train))
        self.reference = self.train_batch.take(ref_rows)
        ids = np.arange(len(self.pool.pixels)) + len(task.train)  # pool ids never collide with training ids
        self.test = Batch(self.pool.pixels, self.codec.encode_pixels(self.pool.pixels), ids)
        digest = hashlib.sha256(self.pool.pixels.tobytes() + ref_rows.tobytes()).hexdigest()[:12]
        self.key = f"{task.name}-{digest}-model{weights_digest(task.model)}"

    def errors(self, split: str, level: float, steps: int, draws: int, seconds: dict | None = None) -> LevelErrors:
        """Cached reconstruction errors of one level for ``split`` (``reference`` or ``test``)."""
        path = ERRORS_DIR / f"{self.key}-{split}-t{level:.3f}-s{steps}-d{draws}-seed{SEED}.npz"
        if path.exists():
            with np.load(path) as stored:
                if seconds is not None:
                    seconds[(split, level, steps, draws)] = float(stored["seconds"])
                return LevelErrors(stored["maps"], stored["latent"])
        batch = self.reference if split == "reference" else self.test
        rec = Reconstructor(self.codec, self.denoiser, (level,), steps, draws, SEED)
        started = time.perf_counter()
        parts = [rec.measure(batch.latents[i:i + 64], batch.take(slice(i, i + 64)).images_tensor(), batch.ids[i:i + 64])
                 for i in range(0, len(batch), 64)]
        spent = time.perf_counter() - started
        errors = LevelErrors.concat(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, maps=errors.maps, latent=errors.latent, seconds=spent)
        tmp.replace(path)  # whole files only: another process may be filling the same cache
        if seconds is not None:
            seconds[(split, level, steps, draws)] = spent
        return errors

    def level_errors(self, split: str, levels, steps: int, draws: int) -> LevelErrors:
        parts = [self.errors(split, t, steps, 1 if t == 0 else draws) for t in levels]
        return LevelErrors(np.concatenate([p.maps for p in parts], axis=1), np.concatenate([p.latent for p in parts], axis=1))

    def fitted_diffusion(self, levels=DEFAULT_LEVELS, steps=DEFAULT_STEPS, draws=DEFAULT_DRAWS, **options) -> DiffusionScore:
        """The diffusion score calibrated on the reference sample, from cached errors."""
        scorer = DiffusionScore(self.codec, self.denoiser, levels=levels, steps=steps, draws=draws, seed=SEED, **options)
        scorer.set_density_reference(self.train_batch.latents, self.train_batch.ids)
        scorer.fit_errors(self.level_errors("reference", scorer.levels, steps, draws), self.reference.latents, self.reference.ids)
        return scorer

    def diffusion(self, levels=DEFAULT_LEVELS, steps=DEFAULT_STEPS, draws=DEFAULT_DRAWS, **options):
        """The diffusion score's Scores on the pool, from cached errors."""
        scorer = self.fitted_diffusion(levels, steps, draws, **options)
        return scorer.score_errors(self.level_errors("test", scorer.levels, steps, draws), self.test.latents, self.test.ids)

    def baseline(self, name: str):
        method = build_method(name, self.codec, None, {"seed": SEED})
        started = time.perf_counter()
        result = method.fit(self.train_batch).score(self.test)
        return result, time.perf_counter() - started


def metrics(pool: Pool, result) -> dict[str, dict]:
    return {case.name: {"protocol": case.protocol, **case_metrics(case, result)} for case in pool.cases}


def protocol_means(per_case: dict[str, dict], metric: str = "auroc") -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for row in per_case.values():
        if metric in row:
            groups.setdefault(row["protocol"], []).append(row[metric])
    return {p: float(np.mean(v)) for p, v in groups.items()}


def tasks(names) -> list[Task]:
    makers = {"digits-holdout-01": lambda: digits_task((0, 1)), "digits-holdout-23": lambda: digits_task((2, 3))}
    for size in TASK_SIZES:
        makers[photos_name(size)] = lambda size=size: photos_task(size=size)
        makers[icons_name(size)] = lambda size=size: icons_task(size=size)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(f"unknown task {unknown[0]!r}; known: {', '.join(makers)}")
    return [makers[n]() for n in names]


TERM_SETS = [("local", "content", "gist"), ("local", "content"), ("content", "gist"), ("local",), ("content",), ("gist",),
             ("local", "density", "style"), ("density",), ("style",)]
SWEEP = [((0.0,), 1), ((0.0, 0.1), 1), ((0.0, 0.1), 4), ((0.0, 0.1, 0.25), 1), ((0.0, 0.1, 0.25), 4),
         ((0.0, 0.1, 0.25, 0.5), 4)]


def calls(prepared: Prepared, levels, steps, draws) -> dict[str, int]:
    return DiffusionScore(prepared.codec, prepared.denoiser, levels, steps, draws).calls_per_image()


def bare_seconds_per_call(codec, denoiser, latent_shape, batch: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per image of one bare denoiser and one bare decoder forward call, at the scorer's batch sizes."""
    out = {}
    with torch.inference_mode():
        z = torch.randn(batch, *latent_shape)
        for name, fn in (("denoiser", lambda: denoiser.unet(z, torch.full((batch,), 50)).sample),
                         ("decoder", lambda: codec.decode(z))):
            fn()
            started = time.perf_counter()
            for _ in range(repeats):
                fn()
            out[name] = (time.perf_counter() - started) / repeats / batch
    return out


def throughput(task: Task, count: int, batch_size: int = 32) -> dict:
    """``latentscope score`` (default settings, self-calibrated) on a scope of ``count`` of the task's test images,
    against the time its model calls alone take (bare forward passes measured before and after, same threads)."""
    import tempfile

    import latentscope
    from latentscope.anomaly import score

    model = str(task.ensure_model())
    codec, denoiser = Codec.from_pretrained(model, device="cpu"), Denoiser.from_pretrained(model, device="cpu")
    pixels = np.concatenate([task.test_normal, *task.anomalies.values()])[:count]
    per_image = DiffusionScore(codec, denoiser).calls_per_image()
    shape = tuple(codec.encode_pixels(pixels[:1]).shape[1:])
    with tempfile.TemporaryDirectory() as folder:
        scope = Path(folder) / "bench.scope"
        latentscope.encode(pixels, model, scope, progress=False)
        before = bare_seconds_per_call(codec, denoiser, shape, batch_size * DEFAULT_DRAWS)
        summary = score(scope, model, progress=False, top=0, batch_size=batch_size, device="cpu")
        after = bare_seconds_per_call(codec, denoiser, shape, batch_size * DEFAULT_DRAWS)
    bare = {k: (before[k] + after[k]) / 2 for k in before}
    bare_image_seconds = per_image["denoiser"] * bare["denoiser"] + per_image["decoder"] * bare["decoder"]
    scored_per_second = summary.scored / summary.seconds
    return {"images": summary.scored, "seconds": summary.seconds, "scored_per_second": scored_per_second,
            "calls": per_image, "bare": bare, "bare_images_per_second": 1 / bare_image_seconds,
            "ratio": scored_per_second * bare_image_seconds}


def training_text(task: Task) -> str:
    epochs = task.training.get("epochs")
    length = "the automatic plan" if epochs is None else f"{epochs} autoencoder and {task.training['denoiser_epochs']} denoiser epochs"
    return f"{length}, training recipe {recipe_of(task.model)}"


def recipe_of(model: Path) -> int:
    """The recipe version a cached model was trained with (``latentscope.training.RECIPE_VERSION`` then)."""
    return json.loads((model / "training.json").read_text())["identity"]["recipe"]


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits-holdout-01", "digits-holdout-23", "photos-32px-holdout5-seed0",
                                                        "icons-32px-seed0", "photos-64px-holdout5-seed0", "icons-64px-seed0"])
    parser.add_argument("--sweep-tasks", nargs="*", help="tasks of the cost / quality sweep (default: every task)")
    parser.add_argument("--throughput-images", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="small pools (a smoke run; figures not comparable)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    sizes = (dict(reference_size=64, max_normal=60, max_per_class=30) if args.quick
             else dict(reference_size=512, max_normal=300, max_per_class=120))
    methods = ("diffusion", *BASELINES)
    rows, described, sweeps, ablation, all_maps, kinds = [], [], {}, {}, {}, {}
    for task in tasks(args.tasks):
        prepared = Prepared(task, **sizes)
        n_normal = len(prepared.pool.cases[0].normal)
        described.append(f"`{task.name}`: model trained on {len(task.train)} normal images ({training_text(task)}); "
                         f"test pool {n_normal} unseen "
                         f"normal images, {len(task.anomalies)} held-out classes "
                         f"({', '.join(f'{k} ({len(c.anomalous)})' for k, c in zip(task.anomalies, prepared.pool.cases))}), "
                         f"{n_normal} defect copies; diffusion calibrated on {len(prepared.reference)} training images")
        results = {"diffusion": prepared.diffusion()}
        for name in BASELINES:
            results[name], _ = prepared.baseline(name)
        per_method = {name: metrics(prepared.pool, result) for name, result in results.items()}
        for protocol in ("semantic", "defects"):
            row = {"task": task.name, "protocol": protocol}
            for name in methods:
                row[name] = protocol_means(per_method[name]).get(protocol)
                row[name + ":pixel"] = protocol_means(per_method[name], "pixel_auroc").get(protocol)
                row[name + ":aupr"] = protocol_means(per_method[name], "aupr").get(protocol)
                row[name + ":f1"] = protocol_means(per_method[name], "f1_max").get(protocol)
            rows.append(row)
            log.info("%s %s: %s", task.name, protocol, {m: round(row[m], 3) for m in methods})
        ablation[task.name] = {terms: protocol_means(metrics(prepared.pool, prepared.diffusion(terms=terms)))
                               for terms in TERM_SETS}
        by_kind = {"default": results["diffusion"], "`local` alone": prepared.diffusion(terms=("local",)),
                   "roundtrip": results["roundtrip"], "pca-pixel": results["pca-pixel"]}
        defects = next(c for c in prepared.pool.cases if c.protocol == "defects")
        kinds[task.name] = {name: {kind: case_metrics(case, result)["auroc"] for kind, case in defects.by_kind().items()}
                            for name, result in by_kind.items()}
        everyone = metrics(prepared.pool, prepared.diffusion(neighbours=0))
        all_maps[task.name] = {"defects": protocol_means(everyone)["defects"],
                               "pixel": protocol_means(everyone, "pixel_auroc")["defects"]}
        if args.sweep_tasks is None or task.name in args.sweep_tasks:
            sweeps[task.name] = []
            for levels, draws in SWEEP:
                out = metrics(prepared.pool, prepared.diffusion(levels=levels, draws=draws))
                means = protocol_means(out)
                sweeps[task.name].append({"levels": levels, "draws": draws, **means,
                                          "pixel": protocol_means(out, "pixel_auroc").get("defects"),
                                          **calls(prepared, levels, DEFAULT_STEPS, draws)})
                log.info("sweep %s %s draws %d: %s", task.name, levels, draws, means)
    speed = throughput(tasks(args.tasks[:1])[0], args.throughput_images) if args.throughput_images else None
    section = render(rows, described, sweeps, ablation, all_maps, kinds, speed, methods, args.quick)
    if args.no_write:
        print(section)
    else:
        write_section("anomaly", section)
        print(section)


def render(rows, described, sweeps, ablation, all_maps, kinds, speed, methods, quick: bool) -> str:
    lines = ["## Anomaly scores (`latentscope score`, `latentscope eval-anomaly`)", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine_line()}; 1-minute load average {os.getloadavg()[0]:.1f} "
             "at the end of the run (absolute times depend on the machine's other work; the throughput ratio compares "
             "times taken in the same conditions).", ""]
    if quick:
        lines += ["**Quick run (small pools): figures not comparable with a full run.**", ""]
    lines += ["Data: " + "; ".join(described) + ". Semantic cases: one held-out class against the unseen normal images "
              "(mean over the task's classes); defects: the normal test images against copies with one synthetic "
              "defect each (blob, scratch, blur, colour shift, noise patch, in turn). Every model comes from "
              "`latentscope.train` on the task's normal training split only; baselines fit on the same split. "
              f"Models are trained once and cached; the current training recipe is {RECIPE_VERSION} "
              "(recipe 5 added the autoencoder's warm start).", "",
              f"Default diffusion score: levels {list(DEFAULT_LEVELS)}, {DEFAULT_STEPS} DDIM steps, {DEFAULT_DRAWS} draws, "
              "terms `local` (top 1% of the heatmap, each image's error maps z-scored against those of its 16 nearest "
              "reference images by the denoiser's features), `content` (kNN distance of the denoiser's bottleneck "
              "features) and `gist` (kNN distance of those features' means over positions), combined as the largest "
              "tail surprise against the reference images.", "",
              "### Image AUROC (best in bold)", "",
              "| task | protocol | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for row in rows:
        best = max(row[m] for m in methods)
        cells = [f"**{fmt(row[m])}**" if row[m] == best else fmt(row[m]) for m in methods]
        lines.append(f"| {row['task']} | {row['protocol']} | " + " | ".join(cells) + " |")
    lines += ["", "Pixel AUROC on the defects protocol (methods with maps):", "",
              "| task | " + " | ".join(m for m in methods if rows[1].get(m + ":pixel") is not None) + " |",
              "|---|" + "---|" * sum(1 for m in methods if rows[1].get(m + ":pixel") is not None)]
    for row in rows:
        if row["protocol"] == "defects":
            with_maps = [m for m in methods if row.get(m + ":pixel") is not None]
            lines.append(f"| {row['task']} | " + " | ".join(fmt(row[m + ':pixel']) for m in with_maps) + " |")
    lines += ["", "AUPR / F1-max of the default score: " + "; ".join(
        f"{r['task']} {r['protocol']} {fmt(r['diffusion:aupr'])} / {fmt(r['diffusion:f1'])}" for r in rows) + ".", ""]
    lines += ["### Targets", ""]
    by_protocol = [(r["task"], r["protocol"], r["diffusion"], max(r[m] for m in BASELINES),
                    max(BASELINES, key=lambda m: r[m])) for r in rows]
    for task, protocol, ours, best, who in by_protocol:
        verdict = "met" if ours >= best - 0.01 else "NOT met"
        lines.append(f"- {task} {protocol}: default {ours:.3f} vs best baseline {who} {best:.3f}: {verdict} (>= best - 0.01)")
    means = {m: float(np.mean([r[m] for r in rows])) for m in methods}
    best_baseline = max(BASELINES, key=lambda m: means[m])
    lines.append(f"- mean over every (task, protocol): default {means['diffusion']:.3f}; best baseline mean "
                 f"{best_baseline} {means[best_baseline]:.3f}: {'met' if means['diffusion'] > means[best_baseline] else 'NOT met'}")
    digits = [r for r in rows if r["task"].startswith("digits")]
    if digits:
        sem = float(np.mean([r["diffusion"] for r in digits if r["protocol"] == "semantic"]))
        dfx = [r for r in digits if r["protocol"] == "defects"]
        d_img, d_pix = float(np.mean([r["diffusion"] for r in dfx])), float(np.mean([r["diffusion:pixel"] for r in dfx]))
        lines.append(f"- digits defects: image AUROC {d_img:.3f} (target 0.99: {'met' if d_img >= 0.99 else 'NOT met'}), "
                     f"pixel AUROC {d_pix:.3f} (target 0.95: {'met' if d_pix >= 0.95 else 'NOT met'})")
        lines.append(f"- digits semantic mean AUROC {sem:.3f} (target 0.98: {'met' if sem >= 0.98 else 'NOT met'})")
    rows_by = {(r["task"], r["protocol"]): r for r in rows}
    if ablation:
        term_sets = list(next(iter(ablation.values())))
        lines += ["", "### Terms of the score (image AUROC, semantic / defects; default levels, steps and draws)", "",
                  "| task | " + " | ".join(" + ".join(t) + (" (default)" if t == DEFAULT_TERMS else "") for t in term_sets) + " |",
                  "|---|" + "---|" * len(term_sets)]
        for task, by_terms in ablation.items():
            lines.append(f"| {task} | " + " | ".join(f"{fmt(m.get('semantic'))} / {fmt(m.get('defects'))}"
                                                     for m in by_terms.values()) + " |")
        lines += ["", "`content` and `gist` measure kNN distances in the denoiser's bottleneck features (its mid block on "
                  "the clean latent), `density` and `style` the same on the latents and their per-channel statistics "
                  "(the default before the denoiser's features). Each term alone is best on its own kind of anomaly "
                  "(`local`: pasted defects; `content`: unseen digit classes; `gist` and `style`: unseen photographs). The "
                  "largest surprise over several terms also ranks high the normal images that happen to be unusual in any "
                  "one of them, so the combination stays below the best single term on each protocol, and each added "
                  "term costs a little on the protocols it does not serve.",
                  "", "Heatmap calibration: each image's error maps are z-scored against those of its 16 nearest reference "
                  "images (default) rather than against all of them (`neighbours=0`); defects image / pixel AUROC, "
                  "16 nearest against all: " + "; ".join(
                      f"{task} {fmt(rows_by[(task, 'defects')]['diffusion'])} / {fmt(rows_by[(task, 'defects')]['diffusion:pixel'])}"
                      f" against {fmt(everyone['defects'])} / {fmt(everyone['pixel'])}"
                      for task, everyone in all_maps.items()) + "."]
    if kinds:
        names = list(dict.fromkeys(k for by_method in kinds.values() for by in by_method.values() for k in by))
        lines += ["", "### Defects by kind (image AUROC; the copies with one kind of defect against the normal test images)", "",
                  "| task | method | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for task, by_method in kinds.items():
            for method, by in by_method.items():
                lines.append(f"| {task} | {method} | " + " | ".join(fmt(by.get(k)) for k in names) + " |")
    if sweeps:
        lines += ["", "### Cost against quality (default score, 5 DDIM steps; calls per image)", "",
                  "| task | levels | draws | denoiser calls | decoder calls | semantic AUROC | defects AUROC | defects pixel AUROC |",
                  "|---|---|---|---|---|---|---|---|"]
        for task, points in sweeps.items():
            for pt in points:
                lines.append(f"| {task} | {', '.join(f'{t:g}' for t in pt['levels'])} | {pt['draws']} | {pt['denoiser']} | "
                             f"{pt['decoder']} | {fmt(pt.get('semantic'))} | {fmt(pt.get('defects'))} | {fmt(pt.get('pixel'))} |")
    if speed:
        lines += ["", "### Throughput", "",
                  f"`latentscope score` with the default settings on a scope of {speed['images']} images (self-calibrated, "
                  f"image loading and writing included): {speed['scored_per_second']:.2f} images/s. Bare forward passes at the "
                  f"same batch sizes: denoiser {1 / speed['bare']['denoiser']:.0f} and decoder {1 / speed['bare']['decoder']:.0f} "
                  f"images/s; {speed['calls']['denoiser']} denoiser (one of them for the features) and "
                  f"{speed['calls']['decoder']} decoder calls per image give {speed['bare_images_per_second']:.2f} images/s for the calls alone. Ratio "
                  f"**{speed['ratio']:.2f}** (target >= 0.85)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
