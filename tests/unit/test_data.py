"""SEV loading: counts, features, the dev hold-out, pinned sha256, malformed files, download, export."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
from datasets import ClassLabel, load_from_disk

from sev_bench import data
from sev_bench.cli import main
from sev_bench.errors import UserError
from sev_bench.hashing import file_sha256
from sev_bench.prompts import EMOTIONS, VALENCES


@pytest.fixture(scope="module")
def sev(sev_data_dir):
    return data.load_sev(sev_data_dir)


def test_split_sizes_and_row_expansion(sev):
    assert {split: len(ds) for split, ds in sev.items()} == {"train": 2304, "dev": 576, "test": 2880}
    for split, skeletons in (("train", 128), ("dev", 32), ("test", 160)):
        assert len(set(sev[split]["skeleton_id"])) == skeletons
        assert len(set(sev[split]["id"])) == len(sev[split])  # one row per (skeleton, valence, emotion)


def test_features_are_class_labels(sev):
    features = sev["test"].features
    assert isinstance(features["valence"], ClassLabel) and features["valence"].names == list(VALENCES)
    assert isinstance(features["target_emotion"], ClassLabel)
    assert features["target_emotion"].names == list(EMOTIONS)
    assert isinstance(features["theme"], ClassLabel) and len(features["theme"].names) == 8


def test_dev_is_a_stratified_fixed_holdout_of_train(sev):
    train_ids, dev_ids = set(sev["train"]["skeleton_id"]), set(sev["dev"]["skeleton_id"])
    assert not train_ids & dev_ids
    themes = sev["dev"].features["theme"].names
    per_theme = {}
    for row in sev["dev"]:
        per_theme.setdefault(themes[row["theme"]], set()).add(row["skeleton_id"])
    assert {theme: len(ids) for theme, ids in per_theme.items()} == {theme: 4 for theme in themes}
    assert "work_04" in dev_ids and "work_09" in dev_ids and "work_00" in train_ids
    assert not (train_ids | dev_ids) & set(sev["test"]["skeleton_id"])


def test_row_content_matches_the_source_file(sev, sev_data_dir):
    first = json.loads((sev_data_dir / "test_set.jsonl").read_text().splitlines()[0])
    row = sev["test"][2 * 6 + 3]  # negative valence, fear
    assert row["id"] == f"{first['skeleton_id']}__negative__fear"
    assert row["scenario"] == first["scenario"] and row["event"] == first["event"]["negative"]


def test_count_table_reports_every_split(sev):
    table = data.count_table(sev)
    assert table["test"]["valence"] == {"positive": 960, "neutral": 960, "negative": 960}
    assert table["dev"]["target_emotion"]["anger"] == 96
    assert sum(table["train"]["theme"].values()) == 2304


def _copy_sev(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("README.md"))
    for path in dst.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def test_sha256_mismatch_names_the_file_and_the_expected_hash(sev_data_dir, tmp_path):
    copy = _copy_sev(sev_data_dir, tmp_path / "sev")
    with open(copy / "test_set.jsonl", "a") as handle:
        handle.write("\n")
    with pytest.raises(UserError, match=r"test_set\.jsonl has sha256 .* expected 9519ae1b") as error:
        data.load_sev(copy)
    assert "\n" not in str(error.value)


def test_missing_file_and_missing_dir(sev_data_dir, tmp_path):
    copy = _copy_sev(sev_data_dir, tmp_path / "sev")
    (copy / "sev.jsonl").unlink()
    with pytest.raises(UserError, match=r"sev\.jsonl is missing"):
        data.load_sev(copy)
    with pytest.raises(UserError, match="does not exist"):
        data.load_sev(tmp_path / "nowhere")


def test_unreadable_file(sev_data_dir, tmp_path):
    copy = _copy_sev(sev_data_dir, tmp_path / "sev")
    (copy / "sev.jsonl").unlink()
    (copy / "sev.jsonl").mkdir()  # a folder where the file should be: unreadable even for root
    with pytest.raises(UserError, match="not a readable file"):
        data.load_sev(copy)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "bad JSON"),
        ("[1, 2]", "got a JSON list"),
        (
            '{"skeleton_id": "x_00", "theme": "Work/Job", "scenario": "s", '
            '"event": {"positive": "p", "negative": "n"}}',
            "lacks valence 'neutral'",
        ),
        ('{"skeleton_id": "x_00", "theme": "Work/Job", "event": {}}', "missing or empty 'scenario'"),
        (
            '{"skeleton_id": "x_00", "theme": "Mars", "scenario": "s", '
            '"event": {"positive": "p", "neutral": "u", "negative": "n"}}',
            "unknown theme",
        ),
    ],
)
def test_malformed_file_stops_with_file_and_reason(sev_data_dir, tmp_path, line, message):
    copy = _copy_sev(sev_data_dir, tmp_path / "sev")
    lines = (copy / "sev.jsonl").read_text().splitlines()
    (copy / "sev.jsonl").write_text("\n".join(lines[:3] + [line] + lines[3:]) + "\n")
    # verify=False: parse a modified (unpinned) file instead of failing its sha256 first
    with pytest.raises(UserError, match=message) as error:
        data.load_sev(copy, verify=False)
    assert "sev.jsonl" in str(error.value)
    # the pinned check alone already refuses it
    with pytest.raises(UserError, match="sha256"):
        data.load_sev(copy)


def _serve(root: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _mirror(sev_data_dir: Path, root: Path) -> Path:
    """The authors' repository layout, as the pinned raw URLs see it."""
    for pinned in [*data.SEV_FILES.values(), *data.REFERENCE_FILES.values()]:
        target = root / pinned.remote
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sev_data_dir / pinned.local, target)
    return root


def test_download_into_cache_verifies_and_reuses(sev_data_dir, tmp_path, monkeypatch):
    server = _serve(_mirror(sev_data_dir, tmp_path / "mirror"))
    try:
        monkeypatch.delenv("SEV_BENCH_DATA_DIR")
        monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("SEV_BENCH_BASE_URL", f"http://127.0.0.1:{server.server_port}/")
        dataset = data.load_sev()
        assert len(dataset["test"]) == 2880
        cached = tmp_path / "cache" / "data" / data.PINNED_COMMIT / "sev.jsonl"
        assert file_sha256(cached) == data.SEV_FILES["train"].sha256
        assert len(data.load_reference("train")) == 2880
    finally:
        server.shutdown()
    # the server is gone: the cache alone serves the second load
    assert len(data.load_sev()["train"]) == 2304


def test_download_with_wrong_bytes_is_refused_and_not_cached(sev_data_dir, tmp_path, monkeypatch):
    mirror = _mirror(sev_data_dir, tmp_path / "mirror")
    with open(mirror / "data" / "sev.jsonl", "a") as handle:
        handle.write("\n")
    server = _serve(mirror)
    try:
        monkeypatch.delenv("SEV_BENCH_DATA_DIR")
        monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("SEV_BENCH_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(UserError, match="expected 7b531352"):
            data.load_sev()
    finally:
        server.shutdown()
    assert not list((tmp_path / "cache").rglob("sev.jsonl"))
    assert not list((tmp_path / "cache").rglob(".download-*"))


def test_download_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("SEV_BENCH_DATA_DIR")
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEV_BENCH_BASE_URL", "http://127.0.0.1:9/")  # discard port: connection refused
    with pytest.raises(UserError, match="--data-dir"):
        data.load_sev()


def test_export_writes_a_hub_ready_folder(sev, tmp_path):
    data.export(sev, tmp_path / "out", data.dataset_fingerprint())
    reloaded = load_from_disk(str(tmp_path / "out" / "hf_dataset"))
    assert {split: len(ds) for split, ds in reloaded.items()} == {"train": 2304, "dev": 576, "test": 2880}
    for split in ("train", "dev", "test"):
        assert (tmp_path / "out" / "data" / f"{split}.parquet").is_file()
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/test.parquet" in card
    assert "Licence note" in card and data.PINNED_COMMIT in card and "ClassLabel" in card


def test_data_info_command(capsys):
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "test: 2880 rows, 160 skeletons" in out and "dev: 576 rows, 32 skeletons" in out
    assert "negative 960" in out
