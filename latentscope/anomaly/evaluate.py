"""Evaluation harness: every method on the same images, image AUROC / AUPR / F1-max and pixel AUROC in one table.

A *case* is one detection problem over a shared pool of test images: some
normal images against some anomalous ones (optionally with defect masks).
Methods score the whole pool once; every case is read off those scores.

Protocols built in (see :func:`semantic_cases` and :func:`defect_case`):

* *semantic*: images of a class the model never saw in training against unseen
  normal images, one case per held-out class;
* *defects*: unseen normal images against copies of them with synthetic local
  defects pasted in (:mod:`latentscope.anomaly.defects`), with masks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .base import Batch, Method, Scores
from .defects import KINDS, paste_defects
from .metrics import image_metrics, pixel_auroc

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("diffusion", "roundtrip", "knn-latent", "iforest-latent", "pca-pixel", "knn-pixel")
BY_KIND = "defects by kind"  # protocol of the per-kind breakdown of a defects case (kept out of the defects mean)


@dataclass
class Case:
    """Normal and anomalous rows of the test pool; ``masks`` (len(anomalous) x H x W) and ``kinds`` (each anomalous
    image's defect kind) when defects have them."""

    name: str
    protocol: str
    normal: np.ndarray
    anomalous: np.ndarray
    masks: np.ndarray | None = None
    kinds: np.ndarray | None = None

    def by_kind(self) -> dict[str, "Case"]:
        """One case per defect kind (the same normal rows against the copies with that kind), protocol
        :data:`BY_KIND`."""
        if self.kinds is None:
            return {}
        return {str(kind): Case(f"{self.protocol}: {kind} only", BY_KIND, self.normal, self.anomalous[self.kinds == kind],
                                None if self.masks is None else self.masks[self.kinds == kind])
                for kind in dict.fromkeys(self.kinds)}


@dataclass
class Pool:
    """Test images (pixels) and the cases defined over them."""

    pixels: np.ndarray
    cases: list[Case] = field(default_factory=list)

    def add(self, pixels: np.ndarray) -> np.ndarray:
        """Append images; returns their rows."""
        start = len(self.pixels)
        self.pixels = np.concatenate([self.pixels, pixels]) if len(self.pixels) else np.asarray(pixels, np.uint8)
        return np.arange(start, start + len(pixels))


def semantic_cases(pool: Pool, normal_rows: np.ndarray, anomalies: dict[str, np.ndarray]) -> list[Case]:
    """One case per held-out class: ``anomalies`` maps a class name to its images."""
    cases = []
    for name, images in anomalies.items():
        cases.append(Case(f"semantic: {name}", "semantic", normal_rows, pool.add(images)))
    pool.cases += cases
    return cases


def defect_case(pool: Pool, normal_rows: np.ndarray, kinds=KINDS, seed: int = 0) -> Case:
    """Copies of the normal images with one synthetic defect each (kinds in turn), with masks."""
    defects = paste_defects(pool.pixels[normal_rows], kinds, seed)
    case = Case("defects: " + ", ".join(kinds), "defects", normal_rows, pool.add(defects.images), defects.masks,
                defects.kinds)
    pool.cases.append(case)
    return case


@dataclass
class Report:
    """Metrics per (case, method), plus the time each method took."""

    rows: list[dict]
    seconds: dict[str, float]

    def table(self, metric: str = "auroc") -> dict[str, dict[str, float]]:
        """{case: {method: value}}."""
        out: dict[str, dict[str, float]] = {}
        for row in self.rows:
            out.setdefault(row["case"], {})[row["method"]] = row.get(metric, float("nan"))
        return out

    def protocol_means(self, metric: str = "auroc") -> dict[str, dict[str, float]]:
        """{protocol: {method: mean over that protocol's cases}}."""
        groups: dict[str, dict[str, list[float]]] = {}
        for row in self.rows:
            groups.setdefault(row["protocol"], {}).setdefault(row["method"], []).append(row[metric])
        return {p: {m: float(np.mean(v)) for m, v in methods.items()} for p, methods in groups.items()}

    def markdown(self) -> str:
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        lines = ["| case | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        cases = list(dict.fromkeys(r["case"] for r in self.rows))
        for case in cases:
            for metric in ("auroc", "aupr", "f1_max", "pixel_auroc"):
                values = {r["method"]: r.get(metric) for r in self.rows if r["case"] == case}
                if all(v is None for v in values.values()):
                    continue
                cells = [f"{values[m]:.3f}" if values.get(m) is not None else "-" for m in methods]
                best = max((values[m] for m in methods if values.get(m) is not None), default=None)
                cells = [f"**{c}**" if values.get(m) is not None and values[m] == best else c for c, m in zip(cells, methods)]
                lines.append(f"| {case} | {metric} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def run_methods(methods: dict[str, Method], reference: Batch, test: Batch, diffusion_reference: Batch | None = None,
                progress: bool = False) -> tuple[dict[str, Scores], dict[str, float]]:
    """Fit every method on the reference and score the test pool; the diffusion score may calibrate on a subsample."""
    results, seconds = {}, {}
    for name, method in methods.items():
        started = time.perf_counter()
        fit_on = diffusion_reference if (diffusion_reference is not None and method.name == "diffusion") else reference
        results[name] = method.fit(fit_on).score(test)
        seconds[name] = time.perf_counter() - started
        log.info("%s: fitted and scored %d images in %.1f s", name, len(test), seconds[name])
    return results, seconds


def case_metrics(case: Case, result: Scores) -> dict:
    rows = np.concatenate([case.normal, case.anomalous])
    labels = np.r_[np.zeros(len(case.normal)), np.ones(len(case.anomalous))]
    out = image_metrics(labels, result.scores[rows])
    if case.masks is not None and result.maps is not None:
        normal_masks = np.zeros((len(case.normal), *case.masks.shape[1:]), bool)
        out["pixel_auroc"] = pixel_auroc(np.concatenate([normal_masks, case.masks]), result.maps[rows])
    return out


def evaluate(
    codec,
    denoiser,
    train_pixels: np.ndarray,
    pool: Pool,
    methods=DEFAULT_METHODS,
    reference_size: int = 512,
    seed: int = 0,
    options: dict | None = None,
    batch_size: int = 32,
) -> Report:
    """Fit every method on ``train_pixels`` (normal images), score ``pool`` and measure every case.

    The diffusion score calibrates on a seeded sample of ``reference_size`` training images; ``options`` go to
    it (levels, steps, draws, ...). Baselines fit on all training images.
    """
    from .stage import build_method

    if not pool.cases:
        raise InputError("evaluation: no cases to measure (give labelled anomalies or ask for defects)")
    methods = list(methods)
    reference = Batch(train_pixels, codec.encode_pixels(train_pixels, batch_size))
    test = Batch(pool.pixels, codec.encode_pixels(pool.pixels, batch_size), np.arange(len(pool.pixels)) + len(train_pixels))
    sample = np.sort(np.random.default_rng([seed, 7]).choice(len(reference), min(reference_size, len(reference)), replace=False))
    built = {}
    for name in methods:
        opts = {"seed": seed, **(options or {}), "batch_size": batch_size} if name == "diffusion" else {"seed": seed}
        built[name] = build_method(name, codec, denoiser, opts)
        if name == "diffusion":  # the density term measures against every training image, like the kNN baseline
            built[name].set_density_reference(reference.latents, reference.ids)
    results, seconds = run_methods(built, reference, test, reference.take(sample))
    rows = []
    for case in _with_kinds(pool.cases):
        for name in methods:
            rows.append({"case": case.name, "protocol": case.protocol, "method": name, **case_metrics(case, results[name])})
    return Report(rows, seconds)


def _with_kinds(cases: list[Case]) -> list[Case]:
    """The cases, each defects case followed by one case per kind when it mixes several."""
    out = []
    for case in cases:
        parts = case.by_kind()
        out += [case, *parts.values()] if len(parts) > 1 else [case]
    return out


# --------------------------------------------------------------------------- folders (the eval-anomaly command)


def load_folder(folder, size: tuple[int, int], progress: bool = False) -> tuple[np.ndarray, list[str], list[str]]:
    """Every readable image under ``folder`` at ``size``: pixels, relative paths, labels (first folder)."""
    from tqdm.auto import tqdm

    from ..errors import ImageError
    from ..images import find_images, label_from_relpath, prepare_image, read_file

    _, found = find_images(folder)
    pixels, paths = [], []
    for item in tqdm(found, desc=f"load {folder}", unit="img", disable=not progress, dynamic_ncols=True):
        try:
            pixels.append(prepare_image(read_file(item.path), size, thumb_size=None).pixels)
            paths.append(item.relpath)
        except ImageError as exc:
            log.warning("%s: skipped (%s)", item.relpath, exc)
    if not pixels:
        raise InputError(f"{folder}: no readable images")
    return np.stack(pixels), paths, [label_from_relpath(p) for p in paths]


def load_masks(folder, paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """MVTec-layout masks for ``paths`` (``<folder>/<label>/<stem>_mask.png`` or ``<stem>.png``), resized to ``size``."""
    from pathlib import Path

    from PIL import Image

    masks = []
    for rel in paths:
        rel_path = Path(rel)
        candidates = [Path(folder) / rel_path.parent / f"{rel_path.stem}_mask.png", Path(folder) / rel_path.parent / f"{rel_path.stem}.png"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(f"--masks {folder}: no mask for {rel} (looked for {candidates[0].name})")
        with Image.open(found) as img:
            mask = img.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
        masks.append(np.asarray(mask) > 127)
    return np.stack(masks)


def evaluate_folders(model, train, test, normal_labels=("good",), masks=None, defects=None, methods=None, options=None,
                     seed: int = 0, reference_size: int = 512, size=None, batch_size: int = 32, device: str = "auto",
                     progress: bool = False) -> tuple[Report, str]:
    """:func:`evaluate` on image folders; returns the report and a line describing the data."""
    from ..codec import Codec
    from ..denoiser import Denoiser

    codec = Codec.from_pretrained(model, device=device)
    methods = list(methods or DEFAULT_METHODS)
    denoiser = Denoiser.from_pretrained(model, device=device) if "diffusion" in methods else None
    if denoiser is not None:
        denoiser.check_latents(codec.latent_channels)
    size = tuple(size or codec.image_size or ())
    if len(size) != 2:
        raise InputError(f"--model {model}: its config has no sample_size; give --size")
    train_pixels, _, _ = load_folder(train, size, progress)
    test_pixels, paths, labels = load_folder(test, size, progress)
    labels = np.array(labels)
    is_normal = np.isin(labels, list(normal_labels))
    if not is_normal.any():
        raise InputError(f"--test {test}: no image has a normal label ({', '.join(normal_labels)}); labels found: "
                         f"{', '.join(sorted(set(labels))) or 'none (images directly in the folder)'}")
    pool = Pool(np.zeros((0, *size, 3), np.uint8))
    normal_rows = pool.add(test_pixels[is_normal])
    classes = [c for c in dict.fromkeys(labels) if c not in normal_labels]
    for name in classes:
        chosen = np.flatnonzero(labels == name)
        rows = pool.add(test_pixels[chosen])
        case_masks = load_masks(masks, [paths[i] for i in chosen], size) if masks else None
        pool.cases.append(Case(f"semantic: {name}" if case_masks is None else f"labelled: {name}", "labelled",
                               normal_rows, rows, case_masks))
    if defects is not None:
        defect_case(pool, normal_rows, tuple(defects) or KINDS, seed)
    described = (f"train: {len(train_pixels)} normal images; test: {int(is_normal.sum())} normal, "
                 + ", ".join(f"{int((labels == c).sum())} {c}" for c in classes)
                 + (f", {len(normal_rows)} with synthetic defects" if defects is not None else "") + f"; size {size[0]}x{size[1]}")
    report = evaluate(codec, denoiser, train_pixels, pool, methods, reference_size, seed, options, batch_size)
    return report, described
