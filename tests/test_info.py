"""``latentscope info``: what a scope holds, from its own files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from conftest import make_image_folder
from latentscope.anomaly import score
from latentscope.cli import main
from latentscope.info import describe, info_lines
from latentscope.ingest import encode
from latentscope.metadata import annotate, set_tag
from latentscope.projection import project
from latentscope.scope import Scope


def test_info_lists_images_maps_scores_and_metadata(tmp_path, kl_folder, capsys):
    images = make_image_folder(tmp_path / "images", 40)
    (images / "a" / "broken.png").write_bytes(b"not a png")
    scope = tmp_path / "scope"
    encode(images, kl_folder, scope, progress=False, device="cpu", thumbnails=False)
    facts = describe(scope)
    assert facts["images"]["files"] == 41 and facts["images"]["encoded"] == 40 and facts["images"]["failed"] == 1
    assert facts["maps"] == {} and facts["scores"] == {} and facts["metadata"] == {}
    lines = info_lines(facts)
    assert "maps: none yet (latentscope project)" in lines and "scores: none yet (latentscope score)" in lines
    assert any(line.startswith("  1 skipped: 1 x ") for line in lines)

    project(scope, "default", n_epochs=20, progress=False)
    score(scope, method="roundtrip", progress=False, top=0)
    ids = Scope(scope).ok_manifest()["id"].to_numpy()
    set_tag(scope, "reviewed", ids[:3])
    annotate(scope, pd.DataFrame({"id": ids, "ink": np.linspace(0, 1, len(ids)), "kind": ["x", "y"] * (len(ids) // 2),
                                  "note": [f"note {i}" for i in range(len(ids))]}))
    facts = describe(scope)
    assert facts["maps"]["default"]["points"] == 40 and facts["maps"]["default"]["dims"] == 2
    assert 0 < facts["maps"]["default"]["trustworthiness"] <= 1
    assert facts["scores"]["default"]["method"] == "roundtrip" and facts["scores"]["default"]["images"] == 40
    assert facts["metadata"] == {
        "reviewed": {"values": 40, "kind": "tag", "marked": 3},
        "ink": {"values": 40, "kind": "number", "min": 0.0, "max": 1.0},
        "kind": {"values": 40, "kind": "category", "distinct": 2},
        "note": {"values": 40, "kind": "text", "distinct": 40},
    }
    assert main(["info", str(scope)]) == 0
    out = capsys.readouterr().out
    assert "images 40 encoded of 41 files" in out and "2 labels" in out and "latents 4 x 16 x 16" in out
    assert "  default: 40 points in 2-D" in out and "  default: roundtrip on 40 images" in out
    assert "  reviewed: tag, 3 of 40 images marked" in out and "  ink: number, 40 values from 0 to 1" in out
    assert main(["info", str(scope), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["reviewed"]["marked"] == 3
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "not a scope" in capsys.readouterr().err


def test_info_says_how_the_latents_were_made(tmp_path, kl_folder):
    images = make_image_folder(tmp_path / "images", 3)
    encode(images, kl_folder, tmp_path / "plain", progress=False, device="cpu", thumbnails=False)
    encode(images, kl_folder, tmp_path / "refined", refine=2, progress=False, device="cpu", thumbnails=False)
    assert info_lines(describe(tmp_path / "plain"))[1].endswith("latents 4 x 16 x 16")
    facts = describe(tmp_path / "refined")
    assert facts["latents"] == {"sample": False, "refine": 2}
    assert info_lines(facts)[1].endswith("; latents refined by 2 steps per image (encode --refine)")
