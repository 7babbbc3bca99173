"""lm-evaluation-harness glue for the SEV tasks: the data (offline, from $SEV_BENCH_DATA_DIR) and the metric
(the sev-bench scorer). Needs `sev-bench` installed in the environment that runs `lm_eval`.

- `load_docs` (`custom_dataset`): one doc per SEV row of the requested valence, in sev-bench's own row order
  (themes interleaved, see `sev_bench.runner.select_rows`), with the chat of a sev-bench method (default
  `prompting`) split into `system` (the task's `description`) and `user` (`doc_to_text`). With
  `--apply_chat_template`, lm-eval sends exactly [system, user] through the tokenizer's chat template with
  the generation prompt, which is the prompt sev-bench's HF backend renders, given sev-bench's fixed template
  inputs: `--model_args '{"pretrained": ..., "chat_template_args": {"date_string": "26 Jul 2024"}}'`
  (`sev_bench.prompts.CHAT_TEMPLATE_KWARGS`; without it a Llama-3 template writes the day's date into the
  prompt). lm-eval hands the model arguments to `load_docs`, which refuses to build the docs when they are
  missing or differ.
- `process_results`: scores the reply with a sev-bench scorer (default: sev-bench's default scorer; choose another with
  `--metadata '{"scorer": "NAME"}'`); `acc` is 1 when the scorer's argmax is the target emotion.
"""

from __future__ import annotations

from functools import cache

from sev_bench.defaults import DEFAULT_SCORER


def load_docs(
    valence: str | None = None,
    method: str = "prompting",
    scorer: str = DEFAULT_SCORER,
    data_dir: str | None = None,
    **_metadata,
):
    """A DatasetDict with splits train / dev / test of SEV rows (one valence, or all), ready for lm-eval.
    lm-eval passes the model arguments and `--metadata` here as keyword arguments: `chat_template_args` must
    carry sev-bench's fixed chat-template inputs; the others are ignored."""
    check_chat_template_args(_metadata.get("chat_template_args"))
    from datasets import Dataset, DatasetDict

    from sev_bench.data import load_sev
    from sev_bench.methods import resolve_method
    from sev_bench.prompts import EMOTIONS, VALENCES
    from sev_bench.runner import select_rows

    chat_method = resolve_method(method).method
    if chat_method.kind != "prompt":
        raise ValueError(f"method {method!r} changes activations; lm-eval tasks cover prompt-only methods")
    valences = [valence] if valence else list(VALENCES)
    splits = {}
    for split, dataset in load_sev(data_dir).items():
        docs = []
        for row in select_rows(dataset, list(EMOTIONS), valences, None):
            messages = chat_method.messages(row, row["target_emotion"])
            if [m["role"] for m in messages] != ["system", "user"]:
                raise ValueError(f"method {method!r} sends {[m['role'] for m in messages]}, not [system, user]")
            docs.append(
                {
                    "id": row["id"],
                    "skeleton_id": row["skeleton_id"],
                    "theme": row["theme"],
                    "valence": row["valence"],
                    "target_emotion": row["target_emotion"],
                    "system": messages[0]["content"],
                    "user": messages[1]["content"],
                    "scorer": scorer,
                }
            )
        splits[split] = Dataset.from_list(docs)
    return DatasetDict(splits)


def check_chat_template_args(given) -> None:
    """Refuse model arguments whose `chat_template_args` lack sev-bench's fixed template inputs (or change
    them): the prompts would then differ from sev-bench's, on a Llama-3 template by the day they run."""
    import json

    from sev_bench.prompts import CHAT_TEMPLATE_KWARGS

    given = given if isinstance(given, dict) else {}
    if any(given.get(key) != value for key, value in CHAT_TEMPLATE_KWARGS.items()):
        wanted = json.dumps(CHAT_TEMPLATE_KWARGS, separators=(",", ":"))
        raise ValueError(
            f'sev tasks render sev-bench\'s prompts: add "chat_template_args": {wanted} to --model_args (JSON) '
            f"(got chat_template_args={json.dumps(given, separators=(',', ':')) if given else 'none'})"
        )


@cache
def _scorer(name: str):
    from sev_bench.scoring import load_scorer

    return load_scorer(name, verbose=False)


def score_reply(doc: dict, reply: str) -> dict:
    """sev-bench's score of one reply: `predicted_emotion`, `probs`, `correct`."""
    return _scorer(doc.get("scorer") or DEFAULT_SCORER).score([reply], [doc["target_emotion"]])[0]


def process_results(doc: dict, results: list[str]) -> dict:
    return {"acc": float(score_reply(doc, results[0])["correct"])}
