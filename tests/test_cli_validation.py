"""Every subcommand refuses bad arguments with one line naming the problem, exit status 2, and writes nothing.

One table: each case is a command line over a small world (images, two models,
a scope made with the first, files and folders that are not what they seem) and
a pattern the error must match. Before and after each case every file of the
world is hashed: a refused command leaves it byte for byte as it was, and
creates nothing. Serving is replaced by an exception, so a case the CLI wrongly
accepts fails instead of listening.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from latentscope.cli import main

from conftest import make_image_folder, tiny_kl, tiny_taesd, write_test_map_and_scores
from reliability import note


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from latentscope.ingest import encode

    root = tmp_path_factory.mktemp("world")
    make_image_folder(root / "images", 8)
    tiny_kl().save_pretrained(root / "model-a")
    tiny_taesd().save_pretrained(root / "model-b")
    tiny_kl(scaling_factor=0.3).save_pretrained(root / "model-a-other")  # same latent shape, other model
    encode(root / "images", root / "model-a", root / "scope", progress=False, device="cpu")
    write_test_map_and_scores(root / "scope")
    encode(root / "images", root / "model-b", root / "scope-b", progress=False, device="cpu", thumbnails=False)
    (root / "notes.txt").write_text("not an image folder, not a model, not a scope\n")
    (root / "unmatched.csv").write_text("file,species\nzebra.png,zebra\n")
    (root / "repeated.csv").write_text("file,species\na/img0000.png,x\nimg0000.png,y\n")
    (root / "empty").mkdir()
    (root / "empty.gif").mkdir()
    (root / "not-empty").mkdir()
    (root / "not-empty" / "keep.txt").write_text("someone's file\n")
    _unet_folder(root / "unet-only")
    _pickled_model(root / "pickled-model")
    (root / "broken-config").mkdir()
    (root / "broken-config" / "config.json").write_text("{not json")
    return root


def _unet_folder(folder: Path) -> None:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(folder)


def _pickled_model(folder: Path) -> None:
    """An autoencoder folder whose weights are a pickle (pytorch_model.bin) instead of safetensors."""
    vae = tiny_kl()
    vae.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(vae.state_dict(), folder / "diffusion_pytorch_model.bin")


# (id, command line with {placeholders} under the world folder, pattern the one-line error must contain)
CASES = [
    # demo
    ("demo: workdir is a file", "demo --workdir {w}/notes.txt", "is a file"),
    ("demo: unknown device", "demo --device tpu --workdir {w}/new", "invalid choice"),
    # train
    ("train: images missing", "train {w}/missing --out {w}/new", "no such folder"),
    ("train: images is a file", "train {w}/notes.txt --out {w}/new", "notes.txt"),
    ("train: no images in folder", "train {w}/empty --out {w}/new", "no image files"),
    ("train: out is a file", "train {w}/images --out {w}/notes.txt", "is a file"),
    ("train: out holds a scope", "train {w}/images --out {w}/scope", "scope"),
    ("train: out is someone's folder", "train {w}/images --out {w}/not-empty", "not empty"),
    ("train: zero epochs", "train {w}/images --out {w}/new --epochs 0", "must be at least 1"),
    ("train: negative epochs", "train {w}/images --out {w}/new --epochs -3", "must be at least 1"),
    ("train: absurd epochs", "train {w}/images --out {w}/new --epochs 10000000000", "absurd"),
    ("train: validation fraction", "train {w}/images --out {w}/new --val-fraction 1.5", "validation fraction"),
    ("train: negative patience", "train {w}/images --out {w}/new --patience -1", "patience"),
    ("train: negative seed", "train {w}/images --out {w}/new --seed -1", "seed"),
    ("train: tiny size", "train {w}/images --out {w}/new --size 3", "sizes run from"),
    ("train: width not a multiple of 8", "train {w}/images --out {w}/new --width 12", "width"),
    ("train: learning rate nan", "train {w}/images --out {w}/new --lr nan", "positive number"),
    ("train: absurd learning rate", "train {w}/images --out {w}/new --lr 1e9", "learning rate"),
    ("train: absurd latent channels", "train {w}/images --out {w}/new --latent-channels 100000", "latent channels"),
    # encode
    ("encode: images missing", "encode {w}/missing --model {w}/model-a --out {w}/new", "missing"),
    ("encode: no images", "encode {w}/empty --model {w}/model-a --out {w}/new", "no image files"),
    ("encode: model missing", "encode {w}/images --model {w}/no-model --out {w}/new", "no-model"),
    ("encode: model is an image folder", "encode {w}/images --model {w}/images --out {w}/new", "model"),
    ("encode: model is a scope", "encode {w}/images --model {w}/scope --out {w}/new", "scope"),
    ("encode: model is a file", "encode {w}/images --model {w}/notes.txt --out {w}/new", "notes.txt"),
    ("encode: model is not an autoencoder", "encode {w}/images --model {w}/unet-only --out {w}/new", "not an autoencoder"),
    ("encode: pickled weights refused", "encode {w}/images --model {w}/pickled-model --out {w}/new", "safetensors"),
    ("encode: broken model config", "encode {w}/images --model {w}/broken-config --out {w}/new", "config"),
    ("encode: scope of another model", "encode {w}/images --model {w}/model-b --out {w}/scope", "another model"),
    ("encode: scope of a same-shaped other model", "encode {w}/images --model {w}/model-a-other --out {w}/scope", "another model"),
    ("encode: out is a file", "encode {w}/images --model {w}/model-a --out {w}/notes.txt", "not a folder"),
    ("encode: out is someone's folder", "encode {w}/images --model {w}/model-a --out {w}/not-empty", "not empty"),
    ("encode: out is the images folder", "encode {w}/images --model {w}/model-a --out {w}/images", "images"),
    ("encode: out is a model folder", "encode {w}/images --model {w}/model-a --out {w}/model-a", "model"),
    ("encode: zero batch", "encode {w}/images --model {w}/model-a --out {w}/new --batch-size 0", "at least 1"),
    ("encode: negative workers", "encode {w}/images --model {w}/model-a --out {w}/new --workers -2", "at least 1"),
    ("encode: absurd batch", "encode {w}/images --model {w}/model-a --out {w}/new --batch-size 5000000000", "absurd"),
    ("encode: negative timeout", "encode {w}/images --model {w}/model-a --out {w}/new --file-timeout -1", "positive"),
    ("encode: size not a number", "encode {w}/images --model {w}/model-a --out {w}/new --size big", "give a size"),
    ("encode: absurd size", "encode {w}/images --model {w}/model-a --out {w}/new --size 100000", "sizes run from"),
    ("encode: size off the model grid", "encode {w}/images --model {w}/model-a --out {w}/new --size 33", "multiple"),
    ("encode: bad background", "encode {w}/images --model {w}/model-a --out {w}/new --background notacolour", "background"),
    ("encode: zero max pixels", "encode {w}/images --model {w}/model-a --out {w}/new --max-pixels 0", "at least 1"),
    ("encode: negative refine", "encode {w}/images --model {w}/model-a --out {w}/new --refine -3", "0 or more"),
    ("encode: refine into an unrefined scope", "encode {w}/images --model {w}/model-a --out {w}/scope --refine 5", "refine=0"),
    ("encode: unknown engine", "encode {w}/images --model {w}/model-a --out {w}/new --engine spark", "invalid choice"),
    ("encode: zero ray actors", "encode {w}/images --model {w}/model-a --out {w}/new --engine ray --ray-actors 0",
     "at least 1"),
    # project
    ("project: scope missing", "project {w}/missing", "not a scope"),
    ("project: scope is a file", "project {w}/notes.txt", "not a scope"),
    ("project: scope is a model folder", "project {w}/model-a", "not a scope"),
    ("project: zero neighbours", "project {w}/scope --n-neighbors 0", "at least 1"),
    ("project: absurd neighbours", "project {w}/scope --n-neighbors 99999999999", "absurd"),
    ("project: negative min dist", "project {w}/scope --min-dist -1", "min"),
    ("project: min dist above spread", "project {w}/scope --min-dist 5", "min"),
    ("project: negative pca", "project {w}/scope --pca -4", "0 or more"),
    ("project: zero epochs", "project {w}/scope --epochs 0", "at least 1"),
    ("project: absurd epochs", "project {w}/scope --epochs 100000000", "epochs"),
    ("project: negative seed", "project {w}/scope --seed -1", "seed"),
    ("project: name escapes", "project {w}/scope --name ../../evil", "name"),
    ("project: unknown warm start", "project {w}/scope --warm-start nope", "nope"),
    ("project: add-new without the map", "project {w}/scope --add-new --name nope", "nope"),
    ("project: zero quality sample", "project {w}/scope --quality-sample 0", "at least 1"),
    ("project: zero sample size", "project {w}/scope --sample-size 0", "at least 1"),
    ("project: negative sample threshold", "project {w}/scope --sample-threshold -5", "0 or more"),
    # score and eval-anomaly
    ("score: scope missing", "score {w}/missing", "not a scope"),
    ("score: model without a denoiser", "score {w}/scope", "unet"),
    ("score: other model", "score {w}/scope --model {w}/model-b --method roundtrip", "model"),
    ("score: unknown truth column", "score {w}/scope --method roundtrip --truth nope", "no metadata column 'nope'"),
    ("score: truth without a value", "score {w}/scope --method roundtrip --truth label", "not a true/false column"),
    ("score: same-shaped other model", "score {w}/scope --model {w}/model-a-other --method roundtrip", "not the one"),
    ("score: reference from another model", "score {w}/scope --method roundtrip --reference {w}/scope-b", "another model"),
    ("score: reference missing", "score {w}/scope --method roundtrip --reference {w}/missing", "not a scope"),
    ("score: level above 1", "score {w}/scope --levels 0 1.5", "between 0 and 1"),
    ("score: zero steps", "score {w}/scope --steps 0", "at least 1"),
    ("score: name escapes", "score {w}/scope --method roundtrip --name ../x", "name"),
    ("score: unknown method", "score {w}/scope --method magic", "invalid choice"),
    ("score: negative top", "score {w}/scope --method roundtrip --top -3", "0 or more"),
    ("score: negative seed", "score {w}/scope --method roundtrip --seed -1", "seed"),
    ("score: export into a file", "score {w}/scope --method roundtrip --export {w}/notes.txt", "is a file"),
    ("eval-anomaly: train folder missing", "eval-anomaly --model builtin:digits --train {w}/missing --test {w}/images",
     "missing"),
    ("eval-anomaly: model without a denoiser", "eval-anomaly --model {w}/model-a --train {w}/images --test {w}/images",
     "unet"),
    ("eval-anomaly: json into a missing folder",
     "eval-anomaly --model {w}/model-a --train {w}/images --test {w}/images --json {w}/no/such/r.json",
     "does not exist"),
    # walk
    ("walk: scope missing", "walk {w}/missing --from 0 --to 1 --out {w}/new.gif", "not a scope"),
    ("walk: unknown id", "walk {w}/scope --from 0 --to 99999 --out {w}/new.gif", "99999"),
    ("walk: garbage end", "walk {w}/scope --from 0 --to banana --out {w}/new.gif", "banana"),
    ("walk: negative id", "walk {w}/scope --from -4 --to 1 --out {w}/new.gif", "-4"),
    ("walk: end file missing", "walk {w}/scope --from 0 --to {w}/missing.png --out {w}/new.gif", "missing.png"),
    ("walk: zero steps", "walk {w}/scope --from 0 --to 1 --steps 0 --out {w}/new.gif", "at least 1"),
    ("walk: absurd steps", "walk {w}/scope --from 0 --to 1 --steps 50000000 --out {w}/new.gif", "steps"),
    ("walk: unknown format", "walk {w}/scope --from 0 --to 1 --out {w}/new.txt", ".txt"),
    ("walk: out folder missing", "walk {w}/scope --from 0 --to 1 --out {w}/no/such/new.gif", "does not exist"),
    ("walk: out is a folder", "walk {w}/scope --from 0 --to 1 --out {w}/empty.gif", "is a folder"),
    ("walk: absurd frame size", "walk {w}/scope --from 0 --to 1 --size 16000 --out {w}/new.gif", "size"),
    ("walk: zero fps", "walk {w}/scope --from 0 --to 1 --fps 0 --out {w}/new.gif", "positive"),
    ("walk: absurd fps", "walk {w}/scope --from 0 --to 1 --fps 100000 --out {w}/new.gif", "fps"),
    ("walk: absurd frames x size", "walk {w}/scope --from 0 --to 1 --steps 5000 --size 2048 --out {w}/new.gif", "GiB"),
    ("walk: polish above 1", "walk {w}/scope --from 0 --to 1 --polish 2 --out {w}/new.gif", "between 0 and 1"),
    ("walk: other model", "walk {w}/scope --from 0 --to 1 --model {w}/model-b --out {w}/new.gif", "model"),
    ("walk: same-shaped other model", "walk {w}/scope --from 0 --to 1 --model {w}/model-a-other --out {w}/new.gif",
     "another model"),
    ("walk: denoiser without unet", "walk {w}/scope --from 0 --to 1 --polish 0.2 --denoiser {w}/model-a --out {w}/new.gif",
     "unet"),
    ("walk: unknown map", "walk {w}/scope --from map:0,0 --to 1 --map nope --out {w}/new.gif", "nope"),
    ("walk: replay missing", "walk --replay {w}/missing.json --out {w}/new.gif", "missing.json"),
    ("walk: replay not a sidecar", "walk --replay {w}/notes.txt --out {w}/new.gif", "notes.txt"),
    # annotate
    ("annotate: scope missing", "annotate {w}/missing {w}/unmatched.csv", "not a scope"),
    ("annotate: table missing", "annotate {w}/scope {w}/missing.csv", "missing.csv: no such file"),
    ("annotate: table is a folder", "annotate {w}/scope {w}/empty", "is a folder"),
    ("annotate: not a table format", "annotate {w}/scope {w}/notes.txt", "unknown table format"),
    ("annotate: nothing matches", "annotate {w}/scope {w}/unmatched.csv", "no row matches"),
    ("annotate: two rows for one image", "annotate {w}/scope {w}/repeated.csv --match name", "both describe"),
    ("annotate: unknown key", "annotate {w}/scope {w}/repeated.csv --key nope", "no column 'nope'"),
    ("annotate: unknown label column", "annotate {w}/scope {w}/repeated.csv --label nope", "no column 'nope'"),
    ("annotate: unknown match", "annotate {w}/scope {w}/repeated.csv --match fuzzy", "invalid choice"),
    # serve
    ("serve: scope missing", "serve {w}/missing", "not a scope"),
    ("serve: scope without a map", "serve {w}/scope-b", "map"),
    ("serve: unknown map", "serve {w}/scope --map nope", "nope"),
    ("serve: port zero", "serve {w}/scope --port 0", "at least 1"),
    ("serve: port too high", "serve {w}/scope --port 70000", "65535"),
    ("serve: unknown host", "serve {w}/scope --host no.such.host.invalid", "no.such.host.invalid"),
    ("serve: other model", "serve {w}/scope --model {w}/model-b", "model"),
    ("serve: same-shaped other model", "serve {w}/scope --model {w}/model-a-other", "another model"),
    ("serve: weak token", "serve {w}/scope --host 0.0.0.0 --token abc", "at least 16"),
    ("serve: model missing", "serve {w}/scope --model {w}/no-model", "no-model"),
    # info
    ("info: scope missing", "info {w}/missing", "not a scope"),
    ("info: scope is a file", "info {w}/notes.txt", "not a scope"),
    # doctor
    ("doctor: scope missing", "doctor {w}/missing", "not a scope"),
    ("doctor: scope is a file", "doctor {w}/notes.txt", "not a scope"),
    ("doctor: other model", "doctor {w}/scope --model {w}/model-b", "model"),
    ("doctor: same-shaped other model", "doctor {w}/scope --model {w}/model-a-other", "another model"),
    # everything
    ("no such command", "fly {w}/scope", "invalid choice"),
]


@pytest.fixture
def no_long_work(monkeypatch):
    """A case the CLI wrongly accepts must fail here, not start listening, training or laying out a map."""
    import dash
    import waitress

    from latentscope.projection.model import LatentProjection
    from latentscope.training.loop import Phase

    def refuse(*args, **kwargs):
        raise AssertionError("the command was accepted and started its work")

    monkeypatch.setattr(waitress, "create_server", refuse)
    monkeypatch.setattr(dash.Dash, "run", refuse)
    monkeypatch.setattr(Phase, "run", refuse)
    monkeypatch.setattr(LatentProjection, "fit", refuse)


@pytest.mark.parametrize("case,command,pattern", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_exit_2_and_nothing_written(world, case, command, pattern, capsys, no_long_work, monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTSCOPE_CACHE", str(tmp_path / "cache"))
    argv = [part.format(w=world) for part in command.split()]
    before = snapshot(world)
    try:
        code = main(["-q", *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{case}: exit {code}; stderr: {err[-1500:]}"
    assert len(err.splitlines()) == 1, f"{case}: not one line:\n{err}"
    assert pattern.lower() in err.lower(), f"{case}: {err!r} does not name the problem ({pattern!r})"
    assert snapshot(world) == before, f"{case}: the command wrote into the world"
    note("bad-input", what="command line", variant=f"latentscope {argv[0]}")


def test_serve_on_a_port_in_use_is_one_line_and_without_a_port_takes_the_next_free_one(world, capsys, monkeypatch):
    import socket

    import dash

    import latentscope.dashboard as dashboard

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["-q", "serve", f"{world}/scope", "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"port {port} is in use" in err and "--port" in err

        class Announced(Exception):
            pass

        def announce(line):
            if "running at" in line:
                raise Announced(line)

        monkeypatch.setattr(dashboard, "DEFAULT_PORT", port)
        with pytest.raises(Announced) as announced:
            dashboard.serve(f"{world}/scope", announce=announce)
        chosen = int(str(announced.value).split(":")[2].split("/")[0])
        assert chosen > port
        ran = {}
        monkeypatch.setattr(dash.Dash, "run", lambda app, **options: ran.update(options))
        dashboard.serve(f"{world}/scope", debug=True, announce=lambda line: None)  # Flask's server binds later
        assert ran["port"] > port and ran["debug"]
    with socket.create_server(("127.0.0.1", chosen)):  # the explorer let go of its port when it stopped
        pass
