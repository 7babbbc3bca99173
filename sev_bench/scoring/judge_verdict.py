"""Reading the judge's reply: the verdict `{"match": 0|1, "reason": ...}` out of whatever the endpoint wrote
around it (markdown fences, leading prose, a bare `"match": 1` when the JSON is broken)."""

from __future__ import annotations

import json
import re

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*(.*?)\s*```", re.DOTALL)
_MATCH_FIELD = re.compile(r"""["']?match["']?\s*[:=]\s*["']?(0|1|true|false)\b""", re.IGNORECASE)


def _first_object(text: str) -> str | None:
    """The first balanced `{...}` of `text` (braces inside JSON strings ignored), else None."""
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            char = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def _as_match(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return int(value.strip().lower() in ("1", "true"))
    return None


def parse_verdict(content: str) -> tuple[int, str]:
    """(match, reason) from a judge reply: markdown fences stripped, the first JSON object parsed;
    failing that, a literal `"match": 0|1` in the text. Raises ValueError when there is no verdict."""
    if not isinstance(content, str) or not content.strip():
        raise ValueError("empty reply")
    fenced = _FENCE.search(content)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(content)
    for candidate in candidates:
        for text in (candidate.strip(), _first_object(candidate)):
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "match" in obj:
                match = _as_match(obj["match"])
                if match is not None:
                    reason = obj.get("reason")
                    return match, reason if isinstance(reason, str) else json.dumps(reason)
    found = _MATCH_FIELD.search(content)
    if found:
        return int(found.group(1).lower() in ("1", "true")), ""
    raise ValueError(f"no JSON verdict in reply {content[:80]!r}")
