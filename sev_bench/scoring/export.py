"""`sev-bench scorer export DIR`: the scorer as a standard Hugging Face text-classification model dir.

The default scorer (`minilm-emotions`) already *is* a stock `BertForSequenceClassification` whose softmax is
the calibrated probability (the temperature is folded into the classifier layer), so the export is its own
files (config with `id2label`, `model.safetensors`, tokenizer) plus a model card: nothing to convert and no
remote code, and `transformers.pipeline("text-classification", model=DIR, top_k=None)` returns sev-bench's
probabilities. The exported dir keeps the scorer's identity: `model_sha256(DIR)` equals the scorer's sha256.
The older scorers are not exported: `minilm-finetuned` is mean pooling plus a cosine-style head (not a
stock class) and `minilm-probe` a logistic regression over frozen embeddings; both are superseded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .. import __version__, goemotions
from ..data import SOURCE_REPOSITORY
from ..errors import UserError
from .base import Scorer
from .emotion_classifier import NAME, MiniLMEmotions, model_sha256

CARD_FILE = "README.md"
# Where the dataset export puts the scorer, and the scorer's card points back to the dataset.
SCORER_SUBDIR = "scorer"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _figures_table(info: dict) -> str:
    agreement = info.get("agreement") or {}
    heldout = info.get("heldout") or {}
    go = heldout.get("goemotions") or {}
    statements = heldout.get("statements") or {}
    rows = [
        (
            "SEV test split, paper's reference replies: accuracy on judge-accepted replies",
            _pct(agreement.get("accuracy_on_judge_accepted")),
        ),
        (
            "SEV test split: agreement with the GPT-4o-mini judge (Cohen's kappa)",
            f"{_pct(agreement.get('agreement'))} ({agreement.get('cohen_kappa')})",
        ),
        (
            "SEV test split: expected calibration error on judge-accepted replies",
            str(agreement.get("ece_on_judge_accepted", "-")),
        ),
        ("GoEmotions test (Ekman grouping, unambiguous comments): macro-F1", str(go.get("macro_f1", "-"))),
        ("GoEmotions test: accuracy / ECE", f"{_pct(go.get('accuracy'))} / {go.get('ece', '-')}"),
        (
            "GoEmotions test: `none` on neutral comments / false `none` on emotional ones",
            f"{_pct(go.get('none_on_neutral'))} / {_pct(go.get('false_none_on_emotional'))}",
        ),
        (
            "Plain statements: lowest share named of the six emotions",
            _pct(min((v for k, v in (statements.get("named_per_label") or {}).items() if k != "none"), default=None)),
        ),
        ("Plain statements: `none` on emotionless ones", _pct((statements.get("named_per_label") or {}).get("none"))),
    ]
    return "\n".join(["| measurement | value |", "| --- | ---: |", *(f"| {a} | {b} |" for a, b in rows)])


def model_card(scorer: MiniLMEmotions, dataset_link: str | None = None) -> str:
    info = scorer.info()
    training = info.get("training") or {}
    go = training.get("goemotions") or {}
    sev = training.get("sev") or {}
    dataset = f"[the SEV dataset export]({dataset_link})" if dataset_link else f"SEV ({SOURCE_REPOSITORY})"
    labels = ", ".join(f"`{label}`" for label in scorer.labels)
    return f"""---
library_name: transformers
pipeline_tag: text-classification
license: apache-2.0
language: en
tags: [emotion, sev-bench, text-classification]
---

# {NAME}: the sev-bench emotion scorer

Exported by sev-bench {__version__}. Identity (sha256 of config and weights): `{scorer.sha256}`.

It reads which emotion a text expresses: one of {labels} (`none`: no emotion). sev-bench uses it to score
the replies of a chat model that a control method (prompting, activation steering, circuit modulation)
asked to express a target emotion on {dataset}: a reply is a hit when the argmax label equals the target.

```python
from transformers import pipeline
classify = pipeline("text-classification", model="PATH/TO/THIS/DIR", top_k=None)
classify("I can't believe they cancelled my flight again!")
```

## Model

`BertForSequenceClassification` from `sentence-transformers/all-MiniLM-L6-v2` (6 layers, 384 wide,
Apache-2.0), fine-tuned end to end except the token embeddings. The probability calibration (one
temperature, {json.dumps(info.get("calibration", {}).get("temperature"))}, fitted on dev data) is folded
into the classifier layer: the plain softmax is the calibrated probability.

## Training data

- **GoEmotions** ({goemotions.CITATION}; {goemotions.SOURCE}): human-written Reddit comments, the train
  split's comments whose labels fall into one group of the authors' Ekman grouping (joy = happiness,
  neutral = none), at most {go.get("cap_per_label")} per label: {json.dumps(go.get("rows_by_label"))}.
- **SEV** (Wang et al., arXiv 2510.11328; {SOURCE_REPOSITORY}; licence not stated by its authors): the
  train split's reference replies of Llama-3.2-3B-Instruct that the paper's GPT-4o-mini judge accepted
  (target emotion as label), and each train skeleton's scenario and neutral event as `none`:
  {json.dumps(sev.get("rows_by_label"))}. The dev skeletons were held out (calibration) and the test split
  only measures.
- Class imbalance: per-label cap plus class-weighted cross-entropy ({json.dumps(training.get("class_weights"))}).

## Measured (sev-bench `scorer eval`)

{_figures_table(info)}

## Intended use and limitations

- Intended: scoring emotion expression in short English replies (one to a few sentences), as the
  benchmark's automatic stand-in for the paper's LLM judge, and comparing control methods with it.
- It reads the emotion a text expresses, not whether that text is fluent: a looping or degenerate reply
  can still be classified as an emotion. Pair it with a fluency check (sev-bench's fluency gate).
- Text beyond 256 tokens is cut. English only. Reddit and one model's replies are its sources; expect
  lower accuracy on other registers (long narratives, sarcasm, code-mixed text).
- GoEmotions' grouping puts approval, caring and gratitude under joy and curiosity under surprise; the
  scorer inherits those choices.
- SEV's licence is not stated by its authors: check with them before redistributing anything derived
  from it, this model included.
"""


def export_scorer(scorer: Scorer, out_dir: str | Path, dataset_link: str | None = None) -> Path:
    """Write `scorer` to `out_dir` as a stock text-classification dir with a model card (see module
    docstring); the dir is assembled aside and moved into place, so a failure leaves no half export."""
    if not isinstance(scorer, MiniLMEmotions):
        raise UserError(
            f"scorer {scorer.id} cannot be exported as a standard classifier; export {NAME} (the default) instead"
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new folder for the export")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as staging:
        staged = Path(staging) / "export"
        shutil.copytree(scorer.model_dir, staged, ignore=shutil.ignore_patterns("*.agreement.json", ".*"))
        (staged / CARD_FILE).write_text(model_card(scorer, dataset_link), encoding="utf-8")
        if model_sha256(staged) != scorer.sha256:
            raise UserError(f"the files of {scorer.model_dir} changed while exporting; run the export again")
        if out.exists():
            out.rmdir()
        staged.rename(out)
    return out
