"""Where the tests find the checkout and their shared files, wherever a test module sits under tests/."""

import os
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
REPO = TESTS.parent
TEST_DATA = TESTS / "data"  # committed test sets (plain statements, real fluency replies)
FAST_PROMPTING = SUPPORT / "fast_prompting.yaml"  # prompting with few new tokens, for quick runs
RUN_WITH_TEST_SCORER = SUPPORT / "run_with_test_scorer.py"  # the CLI with the test-keywords scorer registered


def sev_dir() -> Path:
    """The SEV files: $SEV_BENCH_DATA_DIR, else the workspace copy beside the checkout."""
    chosen = os.environ.get("SEV_BENCH_DATA_DIR")
    return Path(chosen) if chosen else REPO.parent / "shared" / "sev"


def goemotions_dir() -> Path:
    """The GoEmotions files: $SEV_BENCH_GOEMOTIONS_DIR, else the workspace copy beside the checkout."""
    chosen = os.environ.get("SEV_BENCH_GOEMOTIONS_DIR")
    return Path(chosen) if chosen else REPO.parent / "shared" / "goemotions"
