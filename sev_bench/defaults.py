"""Defaults shared by the CLI, the runner and discovery, in a module with no imports (the CLI reads it at
start-up)."""

# The scorer every command uses unless told otherwise: the best one measured against the paper's judge
# (docs/scoring.md, "How it was measured and chosen": the agreement and stress figures of each built-in scorer).
DEFAULT_SCORER = "minilm-emotions"
