"""A scorer candidate that was measured and not shipped: `minilm-probe` (logistic regression on frozen
MiniLM embeddings) with a seventh `none` class, learned from the same no-emotion texts as
`minilm-finetuned` (scenario and neutral event of each train skeleton).

    python benchmarks/scorer_none_class.py [--data-dir DIR]

Prints its accuracy on the judge-accepted test-split replies (beside the six-class probe fitted the same
way) and the share of each stress set it calls `none`. One CPU thread, about 3 minutes here. Result on
2026-11-26: 0.935 vs 0.937 for the six-class fit; `none` for 97.7% of the neutral and 71.9% of the
off-topic stress texts.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from sev_bench import data
from sev_bench.scoring import minilm_probe
from sev_bench.scoring.minilm_finetuned import LABELS, training_rows
from sev_bench.scoring.stress import build_stress_sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    texts, labels, _ = training_rows(args.data_dir)
    names = np.array([LABELS[i] for i in labels])
    test = data.load_reference("test", args.data_dir)
    accepted = np.array([row["judge"]["match"] == 1 for row in test])
    targets = np.array([row["emotion"] for row in test])
    sets = build_stress_sets(args.data_dir)
    with threadpool_limits(limits=1):
        x = minilm_probe._encode(texts)
        x_test = minilm_probe._encode([row["gen_text"] for row in test])
        seven = LogisticRegression(C=minilm_probe.PROBE_C, max_iter=minilm_probe.PROBE_MAX_ITER).fit(x, names)
        emotion_rows = names != "none"
        six = LogisticRegression(C=minilm_probe.PROBE_C, max_iter=minilm_probe.PROBE_MAX_ITER).fit(
            x[emotion_rows], names[emotion_rows]
        )
        for name, model in (("six classes", six), ("six classes + none", seven)):
            predicted = model.predict(x_test)
            print(f"{name}: accuracy on judge-accepted {np.mean(predicted[accepted] == targets[accepted]):.4f}")
        for set_name, items in sets.items():
            predicted = seven.predict(minilm_probe._encode([item["text"] for item in items]))
            line = f"  {set_name}: none {np.mean(predicted == 'none'):.3f}"
            if items[0]["target"] is not None:
                line += f", hit rate {np.mean([p == i['target'] for p, i in zip(predicted, items)]):.3f}"
            print(line)


if __name__ == "__main__":
    main()
