"""`python -m sev_bench`: the `sev-bench` command line."""

import sys

from .cli import main

# Guarded: engines that spawn worker processes (vLLM) re-import the main module in each child.
if __name__ == "__main__":
    sys.exit(main())
