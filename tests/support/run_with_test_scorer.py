"""`sev-bench` with the tests' `test-keywords` scorer registered: the entry point the multi-process tests
hand to torchrun (a launched rank is a fresh interpreter, which does not load the tests' conftest)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keyword_scorer  # noqa: E402,F401  (registers "test-keywords")

from sev_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
