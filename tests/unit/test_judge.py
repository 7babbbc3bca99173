"""judge: the paper's LLM-judge protocol against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sev_bench.cli import main
from sev_bench.errors import UserError
from sev_bench.prompts import EMOTIONS, judge_messages
from sev_bench.scoring import load_scorer
from sev_bench.scoring.files import score_jsonl
from sev_bench.scoring.judge import OTHER, chat_completions_url, redact_url
from sev_bench.scoring.judge_verdict import parse_verdict

SECRET = "sk-test-0123456789abcdef"


def verdict(match: int, reason: str = "ok") -> str:
    return json.dumps({"match": match, "reason": reason})


def keyword_rule(body: dict, n: int = 0):
    """match = 1 when the text names the target emotion (a stand-in for a real judge)."""
    user = body["messages"][1]["content"]
    target = user.split("\n", 1)[0].removeprefix("Target emotion: ")
    text = user.split("Text:\n", 1)[1].split("\nDecide", 1)[0]
    return 200, verdict(int(target in text))


class FakeServer:
    """`behaviour(body, n)` -> (status, content) or (status, content, delay_s); content is the judge's
    reply text for 200 (wrapped in an OpenAI response) and the raw body otherwise."""

    def __init__(self):
        self.behaviour = keyword_rule
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    n = len(server.requests)
                status, content, *delay = server.behaviour(body, n)
                if delay:
                    time.sleep(delay[0])
                if status == 200 and not content.startswith("<raw>"):
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                    }
                    data = json.dumps(payload).encode()
                else:
                    data = content.removeprefix("<raw>").encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def make_judge(server, tmp_path):
    made = []

    def make(**overrides):
        options = {
            "judge_url": server.url,
            "judge_model": "judge-test",
            "judge_timeout": 2.0,
            "judge_max_retries": 2,
            "judge_backoff": 0.01,
            "judge_cache_dir": str(tmp_path / "judge_cache"),
            **overrides,
        }
        judge = load_scorer("judge", options=options)
        made.append(judge)
        return judge

    yield make
    for judge in made:
        judge.close()


TEXTS = ["I am full of anger right now!", "What a calm afternoon.", "Such happiness!"]
TARGETS = ["anger", "anger", "happiness"]


def test_happy_path(server, make_judge):
    judge = make_judge()
    results = judge.score(TEXTS, TARGETS)
    assert [r["correct"] for r in results] == [True, False, True]
    assert [r["predicted_emotion"] for r in results] == ["anger", OTHER, "happiness"]
    assert results[0]["probs"] == {**dict.fromkeys((*EMOTIONS, OTHER), 0.0), "anger": 1.0}
    assert results[1]["probs"][OTHER] == 1.0 and sum(results[1]["probs"].values()) == 1.0
    assert all("score_error" not in r and r["judge_reason"] == "ok" for r in results)
    assert (judge.calls, judge.failures, judge.cache_hits, judge.requests) == (3, 0, 0, 3)
    judge.check_failures()
    sent = sorted((r["body"] for r in server.requests), key=lambda b: b["messages"][1]["content"])
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert all(b["model"] == "judge-test" and b["temperature"] == 0 for b in sent)
    expected = sorted((judge_messages(t, e) for t, e in zip(TEXTS, TARGETS)), key=lambda m: m[1]["content"])
    assert [b["messages"] for b in sent] == expected
    assert all("authorization" not in {k.lower() for k in r["headers"]} for r in server.requests)  # no key set
    info = judge.info()
    assert info["id"] == "judge" and len(info["sha256"]) == 64 and info["labels"] == [*EMOTIONS, OTHER]
    assert info["endpoint"]["url"] == server.url + "/chat/completions" and info["endpoint"]["model"] == "judge-test"
    assert info["counts"] == {"calls": 3, "failures": 0, "cache_hits": 0, "requests": 3}
    with pytest.raises(UserError, match="not a distribution"):
        judge.predict_proba(TEXTS)


def test_cache_hit_makes_no_request(server, make_judge, tmp_path):
    first = make_judge().score(TEXTS, TARGETS)
    assert len(server.requests) == 3
    files = list((tmp_path / "judge_cache").rglob("*.json"))
    assert len(files) == 3 and not list((tmp_path / "judge_cache").rglob("*.tmp"))
    again = make_judge()
    assert again.score(TEXTS, TARGETS) == first
    assert len(server.requests) == 3 and again.cache_hits == 3 and again.requests == 0
    other_model = make_judge(judge_model="another-judge")  # the model is part of the key
    other_model.score(TEXTS[:1], TARGETS[:1])
    assert len(server.requests) == 4 and other_model.sha256 != again.sha256


def test_timeout_is_a_failure_not_a_miss(server, make_judge):
    server.behaviour = lambda body, n: (200, verdict(1), 1.0)
    judge = make_judge(judge_timeout=0.2, judge_max_retries=1)
    started = time.perf_counter()
    (result,) = judge.score(TEXTS[:1], TARGETS[:1])
    assert time.perf_counter() - started < 1.5
    assert result["correct"] is None and result["predicted_emotion"] is None
    assert "timed out" in result["score_error"] and set(result["probs"].values()) == {0.0}
    assert judge.failures == 1 and judge.calls == 1 and len(server.requests) == 2  # one try + one retry
    with pytest.raises(UserError, match=r"judge failed on 1 of 1 texts .*--judge-max-failure-rate") as caught:
        judge.check_failures()
    assert "\n" not in str(caught.value)


def test_500_then_success_is_retried(server, make_judge):
    server.behaviour = lambda body, n: (500, "<raw>oops") if n == 1 else (200, verdict(1))
    judge = make_judge()
    (result,) = judge.score(TEXTS[:1], TARGETS[:1])
    assert result["correct"] is True and judge.failures == 0 and len(server.requests) == 2


def test_429_is_retried(server, make_judge):
    server.behaviour = lambda body, n: (429, "<raw>{}") if n <= 2 else (200, verdict(0))
    (result,) = make_judge().score(TEXTS[:1], TARGETS[:1])
    assert result["correct"] is False and len(server.requests) == 3


def test_persistent_500_exceeds_the_failure_threshold(server, make_judge, tmp_path):
    server.behaviour = lambda body, n: (200, verdict(1)) if "calm" in body["messages"][1]["content"] else (503, "x")
    judge = make_judge(judge_max_retries=2, judge_max_failure_rate=0.5)
    results = judge.score(TEXTS, TARGETS)
    assert [r["correct"] for r in results] == [None, True, None]
    assert "HTTP 503 (gave up after 3 tries)" in results[0]["score_error"]
    assert judge.failures == 2 and judge.calls == 3 and len(server.requests) == 2 * 3 + 1
    assert not list((tmp_path / "judge_cache").rglob("*.json"))[1:]  # only the success is cached
    with pytest.raises(UserError, match=r"judge failed on 2 of 3 texts \(66\.7% > --judge-max-failure-rate 50\.0%\)"):
        judge.check_failures()
    lenient = make_judge(judge_max_failure_rate=1.0)
    lenient.score(TEXTS[:1], TARGETS[:1])
    lenient.check_failures()  # at or under the threshold: fine


def test_malformed_reply_is_a_failure_after_retries(server, make_judge):
    server.behaviour = lambda body, n: (200, "I think the style fits, yes.")
    judge = make_judge(judge_parse_retries=1)
    (result,) = judge.score(TEXTS[:1], TARGETS[:1])
    assert result["correct"] is None and "unparsable judge reply after 2 tries" in result["score_error"]
    assert len(server.requests) == 2 and judge.failures == 1

    server.behaviour = lambda body, n: (200, "<raw>not json at all")  # a broken HTTP body, not just content
    (result,) = make_judge(judge_parse_retries=0).score(TEXTS[1:2], TARGETS[1:2])
    assert result["correct"] is None and "unparsable" in result["score_error"]


def test_fenced_and_sloppy_json_are_parsed(server, make_judge):
    replies = {
        "I am full of anger right now!": '```json\n{"match": 1, "reason": "angry tone"}\n```',
        "What a calm afternoon.": 'Sure! Here is my rating: {"match": 0, "reason": "calm {not angry}"} Hope it helps.',
        "Such happiness!": '{"match": 1, "reason": "cut off',
    }

    def behaviour(body, n):
        text = body["messages"][1]["content"].split("Text:\n", 1)[1].split("\nDecide", 1)[0]
        return 200, replies[text]

    server.behaviour = behaviour
    results = make_judge().score(TEXTS, TARGETS)
    assert [r["correct"] for r in results] == [True, False, True]
    assert results[0]["judge_reason"] == "angry tone" and results[1]["judge_reason"] == "calm {not angry}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"match": 1, "reason": "x"}', (1, "x")),
        ('```\n{"match": 0, "reason": "y"}\n```', (0, "y")),
        ('{"match": true, "reason": "z"}', (1, "z")),
        ('{"match": "0", "reason": "z"}', (0, "z")),
        ("{'match': 1, 'reason': 'single quotes'}", (1, "")),
    ],
)
def test_parse_verdict(content, expected):
    assert parse_verdict(content) == expected


@pytest.mark.parametrize("content", ["", "yes", '{"match": 2}', '{"reason": "no match key"}', "[1]"])
def test_parse_verdict_rejects(content):
    with pytest.raises(ValueError):
        parse_verdict(content)


def test_urls():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    assert redact_url("https://user:pw@h:1/v1/chat/completions?key=s") == "https://h:1/v1/chat/completions"
    with pytest.raises(UserError, match="expected an http"):
        chat_completions_url("ftp://h")


def test_api_key_is_sent_but_never_recorded(server, make_judge, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    judge = make_judge(judge_api_key_env="MY_JUDGE_KEY")
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"text": t, "target_emotion": e}) + "\n" for t, e in zip(TEXTS, TARGETS)), encoding="utf-8"
    )
    out = tmp_path / "out.jsonl"
    summary = score_jsonl(judge, source, out)
    assert summary["n"] == 3 and summary["correct"] == 2 and summary["failed"] == 0
    assert {r["headers"].get("Authorization") for r in server.requests} == {f"Bearer {SECRET}"}
    assert SECRET not in json.dumps(judge.info()) and SECRET not in json.dumps(summary)
    assert SECRET not in out.read_text(encoding="utf-8")
    assert SECRET not in repr(vars(judge))
    cached = list((tmp_path / "judge_cache").rglob("*"))
    assert cached and all(SECRET not in p.read_text(encoding="utf-8") for p in cached if p.is_file())
    assert judge.info()["endpoint"]["api_key_env"] == "MY_JUDGE_KEY"


def test_default_key_variable_and_401_stops_at_once(server, make_judge, monkeypatch):
    monkeypatch.setenv("SEV_BENCH_JUDGE_API_KEY", SECRET)
    server.behaviour = lambda body, n: (401, '<raw>{"error": "bad key"}')
    judge = make_judge()
    with pytest.raises(UserError, match=r"HTTP 401 \(unauthorized\).*\$SEV_BENCH_JUDGE_API_KEY") as caught:
        judge.score(TEXTS[:1], TARGETS[:1])
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}" and len(server.requests) == 1


def test_concurrency_limit(server, make_judge):
    active, peak = [0], [0]
    lock = threading.Lock()

    def behaviour(body, n):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return 200, verdict(1)

    server.behaviour = behaviour
    texts = [f"text {i}" for i in range(12)]
    results = make_judge(judge_concurrency=3).score(texts, ["fear"] * 12)
    assert all(r["correct"] for r in results) and 1 < peak[0] <= 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"judge_model": "m"}, "needs --judge-url"),
        ({"judge_url": "http://127.0.0.1:1/v1"}, "needs --judge-model"),
        ({"judge_url": "http://127.0.0.1:1/v1", "judge_model": "m", "judge_concurrency": 0}, "must be >= 1"),
        ({"judge_url": "http://x/v1", "judge_model": "m", "judge_max_failure_rate": 2}, "between 0 and 1"),
        ({"judge_url": "http://x/v1", "judge_model": "m", "judge_api_key_env": "sk-123"}, "NAME of an environment"),
        ({"judge_url": "http://x/v1", "judge_model": "m", "model": "x"}, "--scorer-model does not apply"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(UserError, match=message):
        load_scorer("judge", options=options)


def _write_input(path, rows):
    path.write_text("".join(json.dumps({"text": t, "target_emotion": e}) + "\n" for t, e in rows), encoding="utf-8")
    return path


def test_cli_score_with_judge(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
    source = _write_input(tmp_path / "in.jsonl", zip(TEXTS, TARGETS))
    out = tmp_path / "out.jsonl"
    flags = ["--scorer", "judge", "--judge-url", server.url, "--judge-model", "m", "--judge-concurrency", "2"]
    assert main(["score", str(source), "-o", str(out), *flags]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] == 2
    assert len(list((tmp_path / "cache" / "judge").rglob("*.json"))) == 3

    server.behaviour = lambda body, n: (400, '<raw>{"error": "context too long"}')  # not retried
    source = _write_input(tmp_path / "in2.jsonl", [("new text", "fear")])
    assert main(["score", str(source), "-o", str(tmp_path / "out2.jsonl"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sev-bench: error: judge failed on 1 of 1 texts") and "HTTP 400" in err
    assert "\n" not in err and not (tmp_path / "out2.jsonl").exists()


def test_cli_scorer_eval_with_judge(server, tmp_path, capsys, monkeypatch):
    """`scorer eval` on a 24-row slice of the test split; the fake judge fails on one row."""
    from sev_bench.scoring import agreement

    original = agreement.data.load_reference
    monkeypatch.setattr(agreement.data, "load_reference", lambda split, data_dir=None: original(split, data_dir)[:24])
    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache"))
    flags = ["--scorer", "judge", "--judge-url", server.url, "--judge-model", "m"]
    server.behaviour = lambda body, n: (200, verdict(1))
    report_path = tmp_path / "report.json"
    assert main(["scorer", "eval", *flags, "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text(encoding="utf-8"))["agreement"]  # the judge has no held-out sets
    assert report["n_failed"] == 0 and report["overall"]["n"] == 24 and report["overall"]["scorer_accuracy"] == 1.0
    assert "Scorer judge" in capsys.readouterr().out

    monkeypatch.setenv("SEV_BENCH_CACHE", str(tmp_path / "cache2"))
    server.requests.clear()
    server.behaviour = lambda body, n: (400, "<raw>bad") if n == 24 else (200, verdict(1))
    assert main(["scorer", "eval", *flags, "--json", str(report_path)]) == 2
    captured = capsys.readouterr()
    assert "1 replies the scorer failed on left out" in captured.out
    assert "judge failed on 1 of 24 texts" in captured.err
    assert json.loads(report_path.read_text(encoding="utf-8"))["agreement"]["n_failed"] == 1
