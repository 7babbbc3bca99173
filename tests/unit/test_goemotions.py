"""GoEmotions: pinned, sha256-checked download on first use, the offline folder, the Ekman grouping."""

from __future__ import annotations

import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from locations import goemotions_dir

from sev_bench import goemotions
from sev_bench.errors import UserError


def test_splits_and_the_ekman_grouping():
    test = goemotions.load("test")
    assert len(test) == 5427
    clear = [c for c in test if not c.ambiguous]
    assert len(clear) == 4968  # 459 comments carry labels of several groups
    counts = {label: sum(c.groups == (label,) for c in clear) for label in goemotions.EKMAN_TO_SEV.values()}
    assert counts == {
        "anger": 572,
        "disgust": 76,
        "fear": 80,
        "happiness": 1863,
        "sadness": 283,
        "surprise": 488,
        "none": 1606,
    }
    # fine-grained labels go to their group: gratitude is joy, nervousness is fear, neutral is none
    by_emotion = {e: c.groups for c in clear for e in c.emotions}
    assert by_emotion["gratitude"] == ("happiness",) and by_emotion["nervousness"] == ("fear",)
    assert by_emotion["neutral"] == ("none",)
    with pytest.raises(UserError, match="no split 'validation'"):
        goemotions.load("validation")


def _serve(root):
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_first_use_downloads_verifies_and_caches(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "goemotions" / "data"
    mirror.mkdir(parents=True)
    for name in goemotions.FILES_SHA256:
        shutil.copyfile(goemotions_dir() / name, mirror / name)
    (mirror / "dev.tsv").write_text("tampered\t27\tx\n")
    server = _serve(tmp_path / "mirror")
    try:
        monkeypatch.delenv("SEV_BENCH_GOEMOTIONS_DIR")
        monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(goemotions, "BASE_URL", f"http://127.0.0.1:{server.server_port}/goemotions/data/")
        assert len(goemotions.load("train")) == 43410
        with pytest.raises(UserError, match="expected 575489c0"):
            goemotions.load("dev")  # the mirror's dev.tsv was tampered with: refused, not cached
    finally:
        server.shutdown()
    cached = tmp_path / "cache" / "goemotions" / goemotions.PINNED_COMMIT
    assert (cached / "train.tsv").is_file() and not (cached / "dev.tsv").exists()
    assert len(goemotions.load("train")) == 43410  # the server is gone: the cache serves it


def test_an_offline_folder_without_the_files_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SEV_BENCH_GOEMOTIONS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="emotions.txt is missing"):
        goemotions.load("test")
    monkeypatch.setenv("SEV_BENCH_GOEMOTIONS_DIR", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not a folder"):
        goemotions.load("test")
