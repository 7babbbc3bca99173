"""Dev-side figures of a trained `minilm-emotions` model dir: the ones candidate scorers are chosen by.

    python benchmarks/scorer_dev.py MODEL_DIR [MODEL_DIR ...]

For each dir: GoEmotions **dev** macro-F1 (Ekman grouping) and the dev plain statements
(`benchmarks/data/plain_statements_dev.jsonl`: share named per label, and the misses). Nothing here reads a
test split; the held-out figures come from `sev-bench scorer eval` / `benchmarks/scorers.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sev_bench.scoring.emotion_classifier import MiniLMEmotions
from sev_bench.scoring.heldout import evaluate_goemotions, evaluate_statements

DEV_STATEMENTS = Path(__file__).parent / "data" / "plain_statements_dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--misses", action="store_true", help="print every misread dev statement")
    args = parser.parse_args()
    for model_dir in args.model_dirs:
        scorer = MiniLMEmotions.from_dir(model_dir)
        go = evaluate_goemotions(scorer, split="dev")
        statements = evaluate_statements(scorer, DEV_STATEMENTS)
        named = statements["named_per_label"]
        emotions = {k: v for k, v in named.items() if k != "none"}
        figures = {
            "dir": str(model_dir),
            "goemotions_dev_macro_f1": round(go["macro_f1"], 3),
            "dev_statements_named": {k: round(v, 3) for k, v in named.items()},
            "dev_statements_lowest_emotion": min(emotions.items(), key=lambda kv: kv[1]),
            "dev_statements_overall": round(statements["accuracy"], 3),
        }
        print(json.dumps(figures))
        if args.misses:
            for miss in statements["misses"]:
                print(f"  {miss['label']:>9} -> {miss['predicted']:<9} {miss['text']}")


if __name__ == "__main__":
    main()
