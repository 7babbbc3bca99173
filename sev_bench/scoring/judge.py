"""`judge`: the paper's LLM-judge protocol against any OpenAI-compatible `/v1/chat/completions` endpoint.

One binary call per (text, target emotion) with the paper's prompts (`prompts.judge_messages`) at
temperature 0; the reply's JSON `{"match": 0|1, "reason": ...}` is the verdict. The judge gives no
distribution, so it maps onto the scorer contract as follows:

- match: `predicted_emotion` = the target, `probs` = 1.0 on the target, `correct` = True;
- no match: `predicted_emotion` = `"other"` (the judge only says "not the target"), `probs` = 1.0 on
  `other`, `correct` = False;
- failure (the endpoint kept failing, or its reply never parsed): `predicted_emotion` = None, every
  prob 0.0, `correct` = None and a `score_error` field. Failures are never scored as misses: they are
  counted (`failures`, `calls`), and `check_failures()` raises a `UserError` when their share exceeds
  `judge_max_failure_rate` (default 0.02).

Options (`load_scorer(..., options=...)`, CLI flags in brackets): `judge_url` [--judge-url] (a base
such as `http://127.0.0.1:8000/v1` or the full `.../chat/completions` URL), `judge_model` [--judge-model],
`judge_api_key_env` [--judge-api-key-env] (the NAME of the environment variable holding the API key,
default `SEV_BENCH_JUDGE_API_KEY`; unset = no Authorization header), `judge_concurrency`
[--judge-concurrency] (8), `judge_max_failure_rate` [--judge-max-failure-rate] (0.02), `judge_timeout`
[--judge-timeout] (60 s per request), and, without flags, `judge_max_retries` (5), `judge_backoff`
(1 s, doubled per retry), `judge_parse_retries` (2) and `judge_cache_dir`. The API key lives only in
the request headers: never in `info()`, results, cache files or error messages.

Timeouts, connection errors, HTTP 429 and 5xx are retried with exponential back-off; an unparsable
reply is asked again up to `judge_parse_retries` times; HTTP 401/403/404 stop the whole run at once
(a wrong key, URL or model name). Verdicts are cached on disk, one JSON file per key under
`cache_dir()/judge/`, keyed by the sha256 of (endpoint URL without credentials, model, messages,
temperature); failures are not cached. The endpoint is part of the scorer's identity (its sha256), the key
never is. Every error message is redacted (the key, any `Bearer ...`, URL credentials) before it is
stored in `score_error` or printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..atomic import write_text_atomic
from ..errors import UserError
from ..paths import cache_dir
from ..prompts import EMOTIONS, JUDGE_SYSTEM, JUDGE_USER_TEMPLATE, judge_messages
from .base import SCORERS, Scorer
from .judge_verdict import parse_verdict
from .options import check_options

NAME = "judge"
FORMAT = "sev_bench.judge/1"
OTHER = "other"
TEMPERATURE = 0.0
# The paper's verdict is a short JSON object; a cap keeps a rambling endpoint from generating for minutes.
MAX_TOKENS = 256
DEFAULT_API_KEY_ENV = "SEV_BENCH_JUDGE_API_KEY"
DEFAULTS = {
    "judge_api_key_env": DEFAULT_API_KEY_ENV,
    "judge_concurrency": 8,
    "judge_max_failure_rate": 0.02,
    "judge_timeout": 60.0,
    "judge_max_retries": 5,
    "judge_backoff": 1.0,
    "judge_parse_retries": 2,
    "judge_cache_dir": None,
}
OPTIONS = ("judge_url", "judge_model", *DEFAULTS)
MAX_BACKOFF_S = 60.0
FATAL_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found"}


def chat_completions_url(url: str) -> str:
    """`.../chat/completions` for a base URL (`http://host:8000`, `http://host:8000/v1`) or the full URL."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--judge-url {redact_url(url)!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    if parts.path.endswith("/chat/completions"):
        return url
    path = parts.path if parts.path.endswith("/v1") else parts.path + "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path + "/chat/completions", parts.query, ""))


def redact_url(url: str) -> str:
    """The URL without user:password, query string or fragment (where credentials may hide)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` without the given secrets, any `Bearer <token>` and any user:password in a URL: what an
    endpoint echoes back (a 400 body quoting the request headers) never reaches a file or a terminal."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = re.sub(r"(?i)\bbearer\s+[^\s\"',;}]+", "Bearer [REDACTED]", text)
    return re.sub(r"(://)[^/\s@]+@", r"\1[REDACTED]@", text)


def cache_key(endpoint: str, model: str, messages: list[dict], temperature: float = TEMPERATURE) -> str:
    """The verdict cache key: which endpoint (its URL without credentials), model, chat and temperature."""
    payload = {"endpoint": endpoint, "model": model, "messages": messages, "temperature": float(temperature)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class _Fatal(Exception):
    """A configuration error the endpoint reports for every call (bad key, URL or model)."""


@SCORERS.register(NAME)
class Judge(Scorer):
    name = NAME
    description = (
        "the paper's binary LLM-judge protocol on any OpenAI-compatible endpoint (--judge-url, --judge-model; "
        f"key from ${DEFAULT_API_KEY_ENV}); temperature 0, cached, failures counted, never scored as misses"
    )
    labels = (*EMOTIONS, OTHER)

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        concurrency: int = 8,
        max_failure_rate: float = 0.02,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        parse_retries: int = 2,
        cache_root: str | Path | None = None,
    ):
        if not isinstance(model, str) or not model.strip():
            raise UserError("scorer judge needs --judge-model (the model name the endpoint serves)")
        if not isinstance(api_key_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
            raise UserError("--judge-api-key-env: expected the NAME of an environment variable, e.g. OPENAI_API_KEY")
        if int(concurrency) < 1:
            raise UserError("--judge-concurrency must be >= 1")
        if not 0 <= float(max_failure_rate) <= 1:
            raise UserError("--judge-max-failure-rate must be between 0 and 1")
        if float(timeout) <= 0 or int(max_retries) < 0 or float(backoff) < 0 or int(parse_retries) < 0:
            raise UserError("scorer judge: timeout must be > 0 and retries / back-off >= 0")
        self.endpoint = chat_completions_url(url)
        self.model = model.strip()
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.max_failure_rate = float(max_failure_rate)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.parse_retries = int(parse_retries)
        self.cache_root = Path(cache_root) if cache_root is not None else cache_dir() / "judge"
        # Counters over this instance's life: texts judged, failed, answered from the cache, HTTP requests.
        self.calls = 0
        self.failures = 0
        self.cache_hits = 0
        self.requests = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._client = None
        self._sha256 = hashlib.sha256(
            json.dumps(
                {
                    "format": FORMAT,
                    "endpoint": redact_url(self.endpoint),
                    "model": self.model,
                    "temperature": TEMPERATURE,
                    "system": JUDGE_SYSTEM,
                    "user_template": JUDGE_USER_TEMPLATE,
                },
                sort_keys=True,
            ).encode("utf-8")
        ).hexdigest()

    @classmethod
    def load(cls, data_dir=None, verbose: bool = True, options: dict | None = None) -> Judge:
        options = {**DEFAULTS, **check_options(NAME, options, OPTIONS)}
        if not options.get("judge_url"):
            raise UserError(
                "scorer judge needs --judge-url (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1) "
                "and --judge-model"
            )
        try:
            import httpx  # noqa: F401  (optional dependency, sev-bench[judge]: checked here, used below)
        except ImportError:
            raise UserError("scorer judge needs httpx: pip install 'sev-bench[judge]'") from None
        return cls(
            url=str(options["judge_url"]),
            model=str(options.get("judge_model") or ""),
            api_key_env=options["judge_api_key_env"],
            concurrency=options["judge_concurrency"],
            max_failure_rate=options["judge_max_failure_rate"],
            timeout=options["judge_timeout"],
            max_retries=options["judge_max_retries"],
            backoff=options["judge_backoff"],
            parse_retries=options["judge_parse_retries"],
            cache_root=options["judge_cache_dir"],
        )

    # -- HTTP ---------------------------------------------------------------------------------------

    def _get_client(self):
        import httpx  # optional dependency (sev-bench[judge]); `load` checked it is installed

        with self._lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._client = httpx.Client(timeout=self.timeout, limits=limits, trust_env=False)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _redact(self, text: str) -> str:
        return redact(text, [os.environ.get(self.api_key_env, "")])

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff * (2**attempt) * (1 + 0.25 * random.random())
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        time.sleep(min(delay, MAX_BACKOFF_S))

    def _request(self, messages: list[dict]) -> tuple[int, str, str]:
        """(match, reason, raw content) from the endpoint; raises RuntimeError (a failure) or _Fatal."""
        import httpx  # optional dependency (sev-bench[judge]); `load` checked it is installed

        client = self._get_client()
        body = {"model": self.model, "messages": messages, "temperature": TEMPERATURE, "max_tokens": MAX_TOKENS}
        transient = parse_errors = 0
        while True:
            with self._lock:
                self.requests += 1
            problem, retry_after = None, None
            try:
                response = client.post(self.endpoint, json=body, headers=self._headers())
            except httpx.TimeoutException:
                problem = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {' '.join(self._redact(str(exc)).split())[:120]}"
            else:
                status = response.status_code
                if status in FATAL_STATUS:
                    raise _Fatal(
                        f"judge endpoint {redact_url(self.endpoint)} answered HTTP {status} "
                        f"({FATAL_STATUS[status]}) for model {self.model!r}; check --judge-url, --judge-model "
                        f"and ${self.api_key_env}"
                    )
                if status == 429 or status >= 500:
                    problem = f"HTTP {status}"
                    retry_after = response.headers.get("retry-after")
                elif status >= 400:
                    # redacted before it is cut short: a cut could leave part of a key unrecognised
                    raise RuntimeError(f"HTTP {status}: {' '.join(self._redact(response.text).split())[:160]}")
                else:
                    try:
                        content = response.json()["choices"][0]["message"]["content"]
                        match, reason = parse_verdict(content)
                        return match, reason, content
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        parse_errors += 1
                        if parse_errors > self.parse_retries:
                            raise RuntimeError(
                                self._redact(f"unparsable judge reply after {parse_errors} tries ({exc})")[:240]
                            ) from None
                        continue
            transient += 1
            if transient > self.max_retries:
                raise RuntimeError(f"{problem} (gave up after {transient} tries)")
            self._sleep(transient - 1, retry_after)

    # -- cache --------------------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path:
        return self.cache_root / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict | None:
        path = self._cache_path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # absent or damaged: ask again
        if not isinstance(entry, dict) or entry.get("match") not in (0, 1):
            return None
        if entry.get("model") != self.model or entry.get("endpoint") != redact_url(self.endpoint):
            return None
        return entry

    def _cache_put(self, key: str, match: int, reason: str, content: str) -> None:
        entry = {
            "format": FORMAT,
            "endpoint": redact_url(self.endpoint),
            "model": self.model,
            "temperature": TEMPERATURE,
            "match": match,
            "reason": reason,
            "content": content,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            write_text_atomic(self._cache_path(key), json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        except OSError:
            pass  # the cache only saves calls; a read-only cache dir must not fail the run

    # -- judging ------------------------------------------------------------------------------------

    def _judge_one(self, text: str, emotion: str) -> dict:
        messages = judge_messages(text, emotion)
        key = cache_key(redact_url(self.endpoint), self.model, messages)
        entry = self._cache_get(key)
        if entry is not None:
            with self._lock:
                self.cache_hits += 1
            return {"match": entry["match"], "reason": entry.get("reason", ""), "error": None, "cached": True}
        try:
            match, reason, content = self._request(messages)
        except RuntimeError as exc:
            error = self._redact(str(exc))  # it goes into score_error and the final error message
            with self._lock:
                self.last_error = error
            return {"match": None, "reason": None, "error": error, "cached": False}
        self._cache_put(key, match, reason, content)
        return {"match": match, "reason": reason, "error": None, "cached": False}

    def judge(self, texts: Sequence[str], targets: Sequence[str]) -> list[dict]:
        """One verdict per (text, target): `{match: 0|1|None, reason, error, cached}` (match None = failure)."""
        texts, targets = list(texts), list(targets)
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
        for target in targets:
            if target not in EMOTIONS:
                raise UserError(f"target emotion {target!r} is not one of {', '.join(EMOTIONS)}")
        if not texts:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(texts)), thread_name_prefix="sev-judge")
        try:
            futures = [pool.submit(self._judge_one, text, target) for text, target in zip(texts, targets)]
            verdicts = [future.result() for future in futures]
        except _Fatal as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            raise UserError(self._redact(str(exc))) from None
        finally:
            pool.shutdown(wait=True)
        with self._lock:
            self.calls += len(verdicts)
            self.failures += sum(v["match"] is None for v in verdicts)
        return verdicts

    def score_texts(self, texts: list[str], targets: list[str]) -> list[dict]:
        """Per (non-empty) text: `predicted_emotion`, `probs`, `correct` and `judge_reason`, or on failure
        `predicted_emotion` None, all-zero `probs`, `correct` None and `score_error` (module docstring)."""
        results = []
        for verdict, target in zip(self.judge(texts, targets), list(targets)):
            if verdict["match"] is None:
                results.append(
                    {
                        "predicted_emotion": None,
                        "probs": dict.fromkeys(self.labels, 0.0),
                        "correct": None,
                        "score_error": verdict["error"],
                    }
                )
                continue
            predicted = target if verdict["match"] else OTHER
            results.append(
                {
                    "predicted_emotion": predicted,
                    "probs": {label: float(label == predicted) for label in self.labels},
                    "correct": bool(verdict["match"]),
                    "judge_reason": verdict["reason"],
                }
            )
        return results

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        raise UserError("scorer judge gives a verdict per (text, target emotion), not a distribution; use score()")

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    def check_failures(self) -> None:
        if self.calls and self.failure_rate > self.max_failure_rate:
            raise UserError(
                f"judge failed on {self.failures} of {self.calls} texts ({self.failure_rate:.1%} > "
                f"--judge-max-failure-rate {self.max_failure_rate:.1%}); last error: {self.last_error}"
            )

    def info(self) -> dict:
        info = super().info()
        info["endpoint"] = {
            "url": redact_url(self.endpoint),
            "model": self.model,
            "temperature": TEMPERATURE,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout,
            "max_retries": self.max_retries,
        }
        info["max_failure_rate"] = self.max_failure_rate
        info["counts"] = {
            "calls": self.calls,
            "failures": self.failures,
            "cache_hits": self.cache_hits,
            "requests": self.requests,
        }
        info["mapping"] = (
            "binary verdict: match -> predicted = target (prob 1.0), no match -> 'other' (prob 1.0), "
            "failure -> predicted None, correct None, score_error"
        )
        return info
