"""Untrusted files: a scope or model folder may come from someone else.

* nothing is ever unpickled: the package source is scanned for every way to
  unpickle, and booby-trapped pickles in a scope are refused without running;
* names read from a scope's own files (scope.json entries, commit markers,
  built-in model names) cannot lead out of their folder;
* the dashboard bounds request sizes and shows user-supplied text (file names,
  folder labels) as text, never as markup (checked in a real browser).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentscope.errors import LatentscopeError, ModelError, ScopeError
from latentscope.scope import Scope

from conftest import REPO, make_image_folder, write_test_map_and_scores
from reliability import note

PACKAGE = REPO / "latentscope"
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


# ---------------------------------------------------------------------- no pickle, ever


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_constant(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unpickling_calls(source: str, filename: str) -> list[str]:
    """Every way the source could unpickle: imports of pickle-like modules, np.load without allow_pickle=False,
    torch.load without weights_only=True, pandas.read_pickle, from_pretrained with remote code or without
    use_safetensors=True, and eval / exec."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            problems.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if name == "load" and owner in ("np", "numpy") and not _is_constant(_keyword(node, "allow_pickle"), False):
                problems.append(f"{where}: np.load without allow_pickle=False")
            if name == "load" and owner == "torch" and not _is_constant(_keyword(node, "weights_only"), True):
                problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("read_pickle", "Unpickler", "loads") and owner in ("pd", "pandas", "pickle", "torch"):
                problems.append(f"{where}: {owner}.{name}")
            if name in ("eval", "exec") and isinstance(func, ast.Name):
                problems.append(f"{where}: {name}()")
            if name == "from_pretrained" and _keyword(node, "trust_remote_code") is not None:
                problems.append(f"{where}: from_pretrained with trust_remote_code")
            loader = func.value.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) else owner
            # ours go through codec.load_model; CLIP's tokenizer reads only its vocabulary (JSON and text files)
            if name == "from_pretrained" and loader not in ("Codec", "Denoiser", "CLIPTokenizer") \
                    and not _is_constant(_keyword(node, "use_safetensors"), True):
                problems.append(f"{where}: {loader}.from_pretrained without use_safetensors=True")
    return problems


#: Files allowed to use pickle, and why: none of them reads a pickle from a file.
PICKLE_ALLOWED = {
    "latentscope/engines/ray_engine.py": "passes in-memory payloads between the processes of one Ray job (Ray itself "
                                         "serialises with pickle); nothing is read from a scope, a model or any file",
}


def test_package_source_never_unpickles():
    files = sorted([*PACKAGE.rglob("*.py"), *(REPO / "apps").rglob("*.py")])
    assert len(files) > 30
    problems = []
    for path in files:
        name = str(path.relative_to(REPO))
        found = unpickling_calls(path.read_text(), name)
        if name in PICKLE_ALLOWED:
            found = [p for p in found if not (p.endswith(": import pickle") or p.endswith(": pickle.loads"))]
        problems += found
    assert not problems, "\n".join(problems)


def test_the_scanner_finds_each_way_to_unpickle():
    bad = """
import pickle
from joblib import load
np.load(path)
np.load(path, allow_pickle=True)
torch.load(path)
pd.read_pickle(path)
eval(text)
AutoencoderKL.from_pretrained(path)
UNet2DModel.from_pretrained(path, use_safetensors=True, trust_remote_code=True)
"""
    good = "np.load(p, allow_pickle=False)\ntorch.load(p, weights_only=True)\nm.eval()\nX.from_pretrained(p, use_safetensors=True)\n"
    assert len(unpickling_calls(bad, "bad.py")) == 9
    assert unpickling_calls(good, "good.py") == []


class Trap:
    """Unpickling this would create ``marker``: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def booby_trap(path: Path, marker: Path) -> None:
    np.save(path, np.array([Trap(marker)], dtype=object), allow_pickle=True)


@pytest.fixture
def scope_path(tmp_path, kl_folder) -> Path:
    from latentscope.ingest import encode

    encode(make_image_folder(tmp_path / "images", 8), kl_folder, tmp_path / "scope", progress=False, device="cpu",
           thumbnails=False)
    write_test_map_and_scores(tmp_path / "scope", with_scores=False)
    return tmp_path / "scope"


def test_a_pickled_latents_file_is_refused_without_running(scope_path, tmp_path):
    marker = tmp_path / "pwned"
    booby_trap(scope_path / "latents.npy", marker)
    with pytest.raises(ScopeError, match="unreadable latents"):
        Scope(scope_path).latents()
    assert not marker.exists()
    note("untrusted", what="pickled latents.npy", refused=True)


def test_a_pickled_index_file_is_refused_without_running(scope_path, tmp_path):
    from latentscope.projection import load_projection

    index = scope_path / "index" / "trap"
    index.mkdir(parents=True)
    marker = tmp_path / "pwned"
    for name in ("ids", "reduced", "knn_indices", "knn_distances"):
        booby_trap(index / f"{name}.npy", marker)
    (index / "index.json").write_text(json.dumps({"format": 1, "metric": "euclidean"}))
    Scope(scope_path).update_meta(maps={"default": {"params": {}, "state": {}, "index": "trap"}})
    with pytest.raises(LatentscopeError):
        load_projection(scope_path)
    assert not marker.exists()
    note("untrusted", what="pickled index arrays", refused=True)


def test_pickled_model_weights_are_refused(tmp_path):
    import torch

    from conftest import tiny_kl
    from latentscope.codec import Codec

    folder = tmp_path / "model"
    vae = tiny_kl()
    vae.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(vae.state_dict(), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled .bin weights are not loaded"):
        Codec.from_pretrained(folder, device="cpu")
    note("untrusted", what="pickled model weights", refused=True)


# ---------------------------------------------------------------------- names that lead out of the scope

ESCAPES = ["../../../etc", "/etc", "../index-elsewhere", "a/../../..", "link-out"]


@pytest.mark.parametrize("index", ESCAPES)
def test_scope_json_paths_cannot_escape_the_scope(scope_path, tmp_path, index, capsys):
    from latentscope.cli import main
    from latentscope.projection import load_projection

    outside = tmp_path / "outside"
    outside.mkdir()
    (scope_path / "index").mkdir(exist_ok=True)
    os.symlink(outside, scope_path / "index" / "link-out")
    Scope(scope_path).update_meta(maps={"default": {"params": {}, "state": {}, "index": index}})
    with pytest.raises(ScopeError, match="out of the scope folder|escapes the scope folder"):
        load_projection(scope_path)
    code = main(["-q", "walk", str(scope_path), "--from", "map:0,0", "--to", "1", "--out", str(tmp_path / "w.gif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "scope folder" in err
    assert not (tmp_path / "w.gif").exists()
    note("traversal", where="scope.json map index", attempt=index, refused=True)


@pytest.mark.parametrize("name", ["../../../tmp/evil", "/etc/passwd", "images.parquet"])
def test_a_tampered_commit_marker_is_refused(scope_path, tmp_path, name):
    victim = tmp_path / "evil"
    victim.write_text("someone else's file")
    partial = scope_path / ".partial"
    partial.mkdir(exist_ok=True)
    (partial / "commit.json").write_text(json.dumps({"latents": name, "manifest": "images.parquet.next"}))
    before = (scope_path / "latents.npy").read_bytes()
    with pytest.raises(ScopeError, match="commit marker"):
        Scope(scope_path)
    assert victim.read_text() == "someone else's file" and (scope_path / "latents.npy").read_bytes() == before
    note("traversal", where="commit marker", attempt=name, refused=True)


@pytest.mark.parametrize("kind,name", [("../maps", "default"), ("maps", "../../x"), ("/tmp", "x")])
def test_a_tampered_table_marker_is_refused(scope_path, kind, name):
    partial = scope_path / ".partial"
    partial.mkdir(exist_ok=True)
    (partial / "commit-maps-default.json").write_text(json.dumps({"kind": kind, "name": name, "entry": {}}))
    with pytest.raises(ScopeError, match="commit marker"):
        Scope(scope_path)
    note("traversal", where="table commit marker", attempt=f"{kind}/{name}", refused=True)


@pytest.mark.parametrize("name", ["../../../../tmp", "digits/../../..", "/etc"])
def test_builtin_model_names_are_plain_words(name):
    from latentscope.codec import Codec

    with pytest.raises(ModelError, match="no built-in model of that name"):
        Codec.from_pretrained(f"builtin:{name}", device="cpu")
    note("traversal", where="builtin model name", attempt=name, refused=True)


def test_manifest_paths_cannot_escape_the_image_folder(scope_path):
    import pandas as pd

    from latentscope.fileio import write_parquet

    scope = Scope(scope_path)
    manifest = scope.manifest().copy()
    manifest.loc[0, "path"] = "../../../../etc/passwd"
    manifest.loc[1, "path"] = "/etc/passwd"
    write_parquet(scope_path / "images.parquet", manifest)
    scope = Scope(scope_path)
    for image_id in manifest["id"][:2]:
        with pytest.raises(ScopeError, match="escapes the image folder"):
            scope.image_path(int(image_id))
        note("traversal", where="manifest path", attempt=str(manifest.loc[manifest["id"] == image_id, "path"].iloc[0]),
             refused=True)
    assert isinstance(pd.read_parquet(scope_path / "images.parquet"), pd.DataFrame)


# ---------------------------------------------------------------------- the dashboard


def test_request_bodies_are_bounded(explorer_scope):
    from latentscope.dashboard import create_app
    from latentscope.dashboard.security import MAX_REQUEST_BYTES

    client = create_app(explorer_scope, device="cpu").server.test_client()
    big = b'{"output": "' + b"x" * (MAX_REQUEST_BYTES + 1) + b'"}'
    response = client.post("/_dash-update-component", data=big, content_type="application/json")
    assert response.status_code == 413
    small = client.post("/_dash-update-component", data=b"{}", content_type="application/json")
    assert small.status_code != 413
    note("request-size", bytes=len(big), status=response.status_code)


HOSTILE_LABEL = '<img src=x onerror="window.pwned=1">'
HOSTILE_FILE = '<svg onload="window.pwned=2">.png'


@pytest.fixture(scope="module")
def hostile_scope(tmp_path_factory, kl_folder) -> Path:
    """A scope whose folder labels and file names are markup that would run script if rendered as HTML."""
    from latentscope.ingest import encode

    root = tmp_path_factory.mktemp("hostile")
    images = make_image_folder(root / "images", 12, classes=(HOSTILE_LABEL, "plain"))
    shutil.move(next((images / HOSTILE_LABEL).glob("*.png")), images / HOSTILE_LABEL / HOSTILE_FILE)
    encode(images, kl_folder, root / "scope", progress=False, device="cpu")
    write_test_map_and_scores(root / "scope")
    return root / "scope"


def test_inspect_panel_keeps_hostile_names_as_text(hostile_scope):
    """The panel is Dash components whose strings React renders as text nodes: the name is a child, not markup."""
    import plotly.utils

    from latentscope.dashboard import create_app  # noqa: F401  (registers the package)
    from latentscope.dashboard.callbacks import Callbacks
    from latentscope.dashboard.data import ExplorerData
    from latentscope.dashboard.jobs import JobManager

    data = ExplorerData(hostile_scope, device="cpu")
    image_id = int(data.points.loc[data.points["path"].str.endswith(HOSTILE_FILE), "id"].iloc[0])
    panel = json.loads(json.dumps(Callbacks(data, JobManager(workers=1)).inspect_panel(image_id), cls=plotly.utils.PlotlyJSONEncoder))

    def texts(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from texts(item)
        elif isinstance(node, dict):
            yield from texts(node.get("props", {}).get("children"))

    shown = list(texts(panel))
    assert any(HOSTILE_FILE in t for t in shown) and HOSTILE_LABEL in shown
    assert "dangerously_allow_html" not in json.dumps(panel)


@pytest.mark.slow
@pytest.mark.browser
def test_hostile_names_render_as_text_in_the_browser(dash_duo, hostile_scope):
    pytest.importorskip("selenium")
    if not shutil.which("chromedriver"):
        pytest.skip("chromedriver is not installed")
    from test_browser import move_to, point_position

    from latentscope.dashboard import create_app

    from latentscope.dashboard.data import ExplorerData

    points = ExplorerData(hostile_scope, device="cpu").points
    image_id = int(points.loc[points["path"].str.endswith(HOSTILE_FILE), "id"].iloc[0])
    dash_duo.start_server(create_app(hostile_scope, device="cpu"))
    dash_duo.wait_for_element("#map .main-svg", timeout=20)
    x, y = point_position(dash_duo, image_id)
    move_to(dash_duo, x, y)
    move_to(dash_duo, x, y, click=True)
    dash_duo.wait_for_contains_text(".facts-table", HOSTILE_FILE, timeout=20)
    assert dash_duo.driver.execute_script("return window.pwned === undefined")
    assert HOSTILE_LABEL in dash_duo.find_element(".facts-table").text
    assert not dash_duo.driver.find_elements("css selector", ".facts-table img, .facts-table svg, #map .legend img")
    note("escaping", where="inspect panel and legend in Chromium", names=2, executed=False)


@pytest.mark.parametrize("key,value", [("maps", "../../../../etc/hostname"), ("maps", "/etc/hostname"),
                                       ("calibration", "../latents.npy")])
def test_score_file_entries_cannot_escape_the_scope(scope_path, key, value):
    """scope.json names each score's heatmap and calibration files; a tampered name must not be followed."""
    pytest.importorskip("latentscope.anomaly")
    import pandas as pd

    from latentscope.anomaly import Heatmaps

    scope = Scope(scope_path)
    ids = scope.ok_manifest()["id"]
    scope.write_scores("tampered", pd.DataFrame({"id": ids, "score": np.zeros(len(ids))}), {"method": "diffusion"},
                       files={key: value})
    with pytest.raises(ScopeError, match="scope folder"):
        heatmaps = Heatmaps(scope_path, "tampered")
        heatmaps.error_map(int(ids.iloc[0]))
    note("traversal", where="scope.json score files", attempt=value, refused=True)
