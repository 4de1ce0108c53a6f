"""Per-image metadata from the user's tables: matching, storing, labels, tags, walk groups, the CLI and doctor."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import latent_scope
from latentscope.cli import main
from latentscope.errors import InputError
from latentscope.metadata import annotate, read_table, set_tag
from latentscope.scope import Scope

PATHS = ["cats/001.png", "cats/002.png", "dogs/001.png", "dogs/007.jpg", "owls/a b.png", "top.png"]


@pytest.fixture
def scope_path(tmp_path):
    latents = np.random.default_rng(0).normal(size=(len(PATHS), 4, 2, 2)).astype(np.float32)
    return latent_scope(tmp_path / "scope", latents, labels=[p.split("/")[0] if "/" in p else "" for p in PATHS], paths=PATHS)


def ids_of(scope_path) -> dict[str, int]:
    ok = Scope(scope_path).ok_manifest()
    return dict(zip(ok["path"], ok["id"]))


def test_paths_from_a_folder_above_absolute_paths_and_windows_separators_match(scope_path, tmp_path):
    images_root = Scope(scope_path).images_root
    table = pd.DataFrame({
        "filepath": ["data/images/cats/001.png", str(images_root / "cats/002.png"), "dogs\\001.png", "./owls/a b.png",
                     "/elsewhere/top.png", "cats/999.png"],
        "species": ["cat", "cat", "dog", "owl", "?", "cat"],
    })
    table.to_csv(tmp_path / "meta.csv")  # with pandas' index column, which is not metadata
    summary = annotate(scope_path, tmp_path / "meta.csv")
    assert (summary.key, summary.match, summary.matched, summary.rows) == ("filepath", "path", 5, 6)
    assert summary.columns == ["species"] and summary.unmatched == ["cats/999.png"]
    stored = Scope(scope_path).metadata().set_index("id")["species"]
    ids = ids_of(scope_path)
    assert stored.to_dict() == {ids["cats/001.png"]: "cat", ids["cats/002.png"]: "cat", ids["dogs/001.png"]: "dog",
                                ids["owls/a b.png"]: "owl", ids["top.png"]: "?"}
    lines = "\n".join(summary.lines())
    assert "matched 5 of 6 rows" in lines and "1 row names no encoded image" in lines and "'cats/999.png'" in lines
    assert "1 of the scope's 6 images have no metadata" in lines
    # the stored table is plain Parquet another tool can open, and scope.json says where it came from
    assert pd.read_parquet(scope_path / "metadata" / "default.parquet").columns.tolist() == ["id", "species"]
    source = Scope(scope_path).meta["metadata"]["default"]["sources"][0]
    assert source["table"] == str(tmp_path / "meta.csv") and source["matched"] == 5


def test_stems_keep_their_leading_zeros_and_shared_names_are_not_guessed(scope_path, tmp_path):
    (tmp_path / "m.csv").write_text("image,score_by_hand\n002,0.5\n007,0.25\n001,0.75\n")
    summary = annotate(scope_path, tmp_path / "m.csv")
    ids = ids_of(scope_path)
    assert summary.match == "stem" and summary.matched == 2 and summary.shared == 1  # 001 is a cat and a dog
    assert "1 row names a file name that several images share" in "\n".join(summary.lines())
    stored = Scope(scope_path).metadata().set_index("id")["score_by_hand"]
    assert stored.to_dict() == {ids["cats/002.png"]: 0.5, ids["dogs/007.jpg"]: 0.25}


def test_the_key_column_is_found_by_what_it_matches_and_small_numbers_are_not_ids(scope_path, tmp_path):
    table = pd.DataFrame({"class": [0, 1, 2, 3], "where": ["cats/001.png", "cats/002.png", "dogs/001.png", "top.png"]})
    summary = annotate(scope_path, table)
    assert summary.key == "where" and summary.matched == 4 and summary.columns == ["class"]
    by_id = annotate(scope_path, pd.DataFrame({"id": [0, 5, 99], "note": ["a", "b", "c"]}))
    assert (by_id.key, by_id.match, by_id.matched) == ("id", "id", 2)


def test_label_column_replaces_folder_labels_and_taken_names_are_renamed(scope_path, tmp_path):
    table = pd.DataFrame({"file": ["cats/001.png", "dogs/001.png"], "breed": ["siamese", "  collie "],
                          "label": ["old", "old"], "x": [1.0, 2.0], "score:mine": [3, 4]})
    summary = annotate(scope_path, table, label="breed")
    assert summary.renamed == {"label": "label (metadata)", "x": "x (metadata)", "score:mine": "score:mine (metadata)"}
    ok = Scope(scope_path).ok_manifest().set_index("path")["label"]
    assert ok["cats/001.png"] == "siamese" and ok["dogs/001.png"] == "collie"
    assert ok["cats/002.png"] == "cats" and ok["top.png"] == ""  # images the table does not name keep folder labels
    assert Scope(scope_path).manifest().set_index("path").loc["cats/001.png", "label"] == "cats"  # the manifest stays


def test_a_second_table_adds_columns_and_replaces_values_only_for_its_images(scope_path, tmp_path):
    annotate(scope_path, pd.DataFrame({"path": ["cats/001.png", "cats/002.png"], "note": ["a", "b"], "n": [1, 2]}))
    annotate(scope_path, pd.DataFrame({"path": ["cats/002.png", "top.png"], "note": ["B", None], "extra": [True, False]}))
    ids = ids_of(scope_path)
    stored = Scope(scope_path).metadata().set_index("id")
    assert list(stored.columns) == ["note", "n", "extra"]
    assert stored.loc[ids["cats/001.png"], "note"] == "a" and stored.loc[ids["cats/002.png"], "note"] == "B"
    assert stored.loc[ids["top.png"], "extra"] == False and pd.isna(stored.loc[ids["top.png"], "note"])  # noqa: E712
    assert len(Scope(scope_path).meta["metadata"]["default"]["sources"]) == 2
    annotate(scope_path, pd.DataFrame({"path": ["top.png"], "fresh": [1]}), replace=True)
    assert Scope(scope_path).metadata().columns.tolist() == ["id", "fresh"]
    assert len(Scope(scope_path).meta["metadata"]["default"]["sources"]) == 1


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json", ".tsv"])
def test_every_table_format_reads(scope_path, tmp_path, suffix):
    table = pd.DataFrame({"file": ["cats/001.png", "top.png"], "tags": [["a", "b"], ["c"]], "mixed": [1, "x"]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".parquet":
        table.drop(columns="mixed").to_parquet(path)
    elif suffix == ".jsonl":
        table.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        table.to_json(path, orient="records")
    else:
        table.to_csv(path, sep="\t", index=False)
    assert annotate(scope_path, path).matched == 2
    stored = Scope(scope_path).metadata()
    assert stored["tags"].map(lambda v: isinstance(v, str)).all()  # lists become text the explorer can show
    if "mixed" in stored:
        assert stored["mixed"].tolist() == ["1", "x"]


def test_bad_tables_give_one_line_errors_naming_the_file(scope_path, tmp_path):
    cases = {
        "missing.csv": (None, "no such file"),
        "t.xlsx": (b"x", "unknown table format '.xlsx'"),
        "empty.csv": (b"file,note\n", "the table has no rows"),
        "broken.parquet": (b"not parquet at all", "not a readable PARQUET table"),
        "nothing.csv": (b"file,note\nzebra.png,a\n", "no row matches an image of the scope"),
        "repeat.csv": (b"file,note\ncats/001.png,a\ntop.png,b\ncats/001.png,c\n", "rows 1 and 3 both describe image 'cats/001.png'"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(InputError) as error:
            annotate(scope_path, path)
        assert str(path.name) in str(error.value) and reason in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="<table>: column 'note' appears twice"):
        annotate(scope_path, pd.DataFrame([["top.png", 1, 2]], columns=["file", "note", "note"]))
    with pytest.raises(InputError, match="no column 'nope'"):
        annotate(scope_path, pd.DataFrame({"file": ["top.png"]}), key="nope")
    with pytest.raises(InputError, match="no column 'nope'"):
        annotate(scope_path, pd.DataFrame({"file": ["top.png"]}), label="nope")
    assert not (scope_path / "metadata").exists()  # nothing half-written


def test_csv_cells_are_read_as_written_when_asked(tmp_path):
    (tmp_path / "t.csv").write_text("name,n\n007,7\n")
    assert read_table(tmp_path / "t.csv", as_text=True).loc[0, "name"] == "007"
    assert read_table(tmp_path / "t.csv").loc[0, "n"] == 7


def test_tags_mark_and_unmark_images(scope_path):
    ids = sorted(ids_of(scope_path).values())
    assert set_tag(scope_path, "reviewed", ids[:3] + [10**6]) == 3
    assert set_tag(scope_path, "reviewed", ids[1:2], value=False) == 2
    column = Scope(scope_path).metadata().set_index("id")["reviewed"]
    assert column.dtype == bool and column.to_dict() == {i: i in (ids[0], ids[2]) for i in ids}
    annotate(scope_path, pd.DataFrame({"path": ["top.png"], "note": ["n"]}))
    with pytest.raises(InputError, match="not a tag"):
        set_tag(scope_path, "note", ids[:1])
    for bad in ("", "x", "label", "score:default", "a" * 65, "two\nlines", "bell\a"):
        with pytest.raises(InputError, match="tag"):
            set_tag(scope_path, bad, ids[:1])
    with pytest.raises(InputError, match="none of the given ids"):
        set_tag(scope_path, "other", [10**6])


def test_walk_groups_take_metadata_values(scope_path):
    from latentscope.walks.core import Walker
    from latentscope.walks.ends import parse_group

    ids = ids_of(scope_path)
    annotate(scope_path, pd.DataFrame({"path": list(ids), "legs": [4, 4, 4, 4, 2, 0], "kind": list("mmmmbx")}))
    assert parse_group("legs=4") == {"column": "legs", "value": "4"}
    walker = Walker(Scope(scope_path))
    latents = Scope(scope_path).latents_for_ids([ids[p] for p in PATHS[:4]])
    assert np.allclose(walker.group_mean(parse_group("legs=4.0")), latents.mean(axis=0), atol=1e-3)
    assert np.allclose(walker.group_mean(parse_group("kind=b")), Scope(scope_path).latents_for_ids([ids["owls/a b.png"]])[0], atol=1e-3)
    with pytest.raises(InputError, match="no metadata column 'wings'.*legs, kind"):
        walker.group_mean(parse_group("wings=2"))
    with pytest.raises(InputError, match=r"no encoded image has that value \(values: 0, 2, 4\)"):
        walker.group_mean(parse_group("legs=3"))


def test_cli_annotates_and_reports_bad_input_on_one_line(scope_path, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("file,species\ncats/001.png,cat\ndogs/007.jpg,dog\n")
    assert main(["annotate", str(scope_path), str(tmp_path / "labels.csv"), "--label", "species"]) == 0
    out = capsys.readouterr().out
    assert "labels.csv: matched 2 of 2 rows to images by column 'file' (path); columns: label" in out
    assert main(["annotate", str(scope_path), str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.csv: no such file" in err
    assert Scope(scope_path).ok_manifest().set_index("path").loc["dogs/007.jpg", "label"] == "dog"  # kept


def test_doctor_drops_metadata_of_images_that_are_gone_and_moves_an_unreadable_table(scope_path):
    from latentscope.doctor import diagnose

    annotate(scope_path, pd.DataFrame({"id": [0, 1], "note": ["a", "b"]}))
    table = scope_path / "metadata" / "default.parquet"
    pd.DataFrame({"id": [0, 1, 999], "note": ["a", "b", "c"]}).to_parquet(table)
    report = diagnose(scope_path)
    assert "metadata/default.parquet has 1 rows for ids not in the manifest" in "\n".join(report.lines())
    assert pd.read_parquet(table)["id"].tolist() == [0, 1]
    table.write_bytes(b"garbage")
    report = diagnose(scope_path)
    assert "metadata/default.parquet is unreadable" in "\n".join(report.lines())
    assert not table.exists() and list((scope_path / ".damaged" / "metadata").iterdir())
    assert Scope(scope_path).metadata().columns.tolist() == ["id"]


def test_metadata_entry_in_scope_json_is_plain_json(scope_path):
    annotate(scope_path, pd.DataFrame({"id": [0], "when": pd.to_datetime(["2026-01-02"])}))
    json.loads((scope_path / "scope.json").read_text())
    assert Scope(scope_path).metadata()["when"].iloc[0] == pd.Timestamp("2026-01-02")


def test_encode_attaches_a_folder_metadata_file_in_the_hugging_face_layout(tmp_path, kl_folder):
    from conftest import make_image_folder
    from latentscope.ingest import encode

    images = make_image_folder(tmp_path / "images", 6)
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    pd.DataFrame({"file_name": files, "caption": [f"picture {i}" for i in range(6)]}).to_csv(images / "metadata.csv", index=False)
    summary = encode(images, kl_folder, tmp_path / "scope", progress=False, device="cpu", thumbnails=False)
    assert summary.encoded == 6 and "metadata.csv: matched 6 of 6 rows to images by column 'file_name' (path)" in summary.lines()[-1]
    stored = Scope(tmp_path / "scope").metadata().merge(Scope(tmp_path / "scope").ok_manifest(), on="id")
    assert dict(zip(stored["path"], stored["caption"])) == {f: f"picture {i}" for i, f in enumerate(files)}
    assert not encode(images, kl_folder, tmp_path / "other", progress=False, device="cpu", thumbnails=False,
                      metadata=False).metadata
    # a table that fits no image is reported, and the images are encoded all the same
    (images / "metadata.csv").write_text("file_name,caption\nzebra.png,x\n")
    summary = encode(images, kl_folder, tmp_path / "third", progress=False, device="cpu", thumbnails=False)
    assert summary.encoded == 6 and summary.lines()[-1].startswith("metadata not attached: ") and "no row matches" in summary.lines()[-1]


def test_an_unwritable_scope_gives_one_line_and_keeps_what_it_has(scope_path, tmp_path, monkeypatch, capsys):
    import builtins

    from latentscope.errors import StorageError
    from latentscope.fileio import write_bytes

    annotate(scope_path, pd.DataFrame({"id": [0], "note": ["kept"]}))

    def refuse(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr("latentscope.scope.open", refuse, raising=False)
    with pytest.raises(StorageError, match="cannot write to this scope \\(Permission denied\\); nothing was changed"):
        set_tag(scope_path, "flag", [1])
    assert main(["annotate", str(scope_path), str(tmp_path / "t.csv")]) == 2  # missing table: reported first
    (tmp_path / "t.csv").write_text("id,note\n1,new\n")
    assert main(["annotate", str(scope_path), str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "cannot write to this scope" in err[-1]
    monkeypatch.undo()
    assert Scope(scope_path).metadata()["note"].tolist() == ["kept"]
    monkeypatch.setattr("tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(StorageError, match="could not write \\(Permission denied\\)"):
        write_bytes(tmp_path / "x.bin", b"1")
