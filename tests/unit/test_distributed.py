"""Multi-process runs: `torchrun --nproc_per_node 2` over gloo on CPU gives the single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from locations import FAST_PROMPTING, RUN_WITH_TEST_SCORER
from test_run import _request, _samples

from sev_bench.distributed import Launch, detect_launch
from sev_bench.errors import UserError
from sev_bench.runner import run

LAUNCHER = RUN_WITH_TEST_SCORER
SELECTION = {"emotions": ["anger", "fear"], "limit": 30}  # 5 skeletons: the hash splits them 4 / 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(output_dir: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(LAUNCHER), "run", "--method", str(FAST_PROMPTING),
        "--model", "tiny-random-qwen2", "--emotions", "anger", "fear", "--limit", "30", "--batch-size", "4",
        "--scorer", "test-keywords", "--threads", "1", "--no-progress", "--output-dir", str(output_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_launch_is_read_from_the_launcher_environment():
    assert detect_launch({}) is None
    assert detect_launch({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert detect_launch({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Launch(2, 4, 0)
    assert detect_launch({"WORLD_SIZE": "2", "RANK": "1"}).shard == (1, 2)
    with pytest.raises(UserError, match="outside"):
        detect_launch({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(UserError, match="integers"):
        detect_launch({"WORLD_SIZE": "two"})


def test_two_ranks_merge_into_the_single_process_result(tmp_path):
    whole, whole_dir = run(_request(tmp_path / "whole", **SELECTION))
    launched = _torchrun(tmp_path / "ranks")
    assert launched.returncode == 0, launched.stderr[-3000:]
    run_dir = tmp_path / "ranks"
    assert "rank 1/2 done; rank 0 merges" in launched.stderr
    assert not list(run_dir.glob("samples.shard-*")) and not (run_dir / ".finish.lock").exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"] == whole["metrics"]
    merged = _samples(run_dir)
    assert len(merged) == 30
    assert {s["id"]: s for s in merged} == {s["id"]: s for s in _samples(whole_dir)}  # every field, fluency too
    # Launching the finished run again does nothing and leaves the result as it was.
    again = _torchrun(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text()) == results


def test_each_rank_resumes_its_own_shard(tmp_path):
    """A launch killed after rank 0's shard was written resumes: rank 0 generates nothing, rank 1 its part."""
    first = run(_request(tmp_path, output_dir=str(tmp_path / "ranks"), shard=(0, 2), **SELECTION))[0]
    assert first is None  # shard 1 of 2 still missing
    shard_zero = (tmp_path / "ranks" / "samples.shard-0-of-2.jsonl").read_text()
    launched = _torchrun(tmp_path / "ranks")
    assert launched.returncode == 0, launched.stderr[-3000:]
    merged = _samples(tmp_path / "ranks")
    assert len(merged) == 30
    kept = [json.loads(line) for line in shard_zero.splitlines()]
    assert all(sample in merged for sample in kept)  # rank 0's earlier replies, reused as written


def test_shard_flag_under_a_launch_is_a_user_error(tmp_path):
    launched = _torchrun(tmp_path / "ranks", "--shard", "0/2")
    assert launched.returncode != 0
    assert "--shard cannot be combined with a 2-process launch" in launched.stderr
    # A rank says one line (torchrun may stop the other before it prints its own); the only traceback is
    # torchrun's report of the failed child.
    assert launched.stderr.count("sev-bench: error: --shard cannot") >= 1
    assert "sev_bench/" not in launched.stderr
