"""The context a `sev-bench discover ...` command builds before it discovers anything: its options
checked, torch's threads set, the model loaded and, for accept=scorer, the scorer loaded."""

from __future__ import annotations

import sys

from ..errors import UserError
from ..models import load_model
from ..prepare_context import PrepareContext
from ..scoring import load_scorer


def command_context(
    model: str,
    *,
    accept: str,
    scorer_name: str,
    scorer_options: dict | None,
    data_dir: str | None,
    batch_size: int,
    dtype: str,
    device: str,
    threads: int | None,
    progress: bool,
):
    """A `PrepareContext` (what a method's `prepare` gets) for a discovery run from the command line,
    logging to stderr."""
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if threads is not None:
        if threads < 1:
            raise UserError("--threads must be >= 1")
        import torch  # heavy: only when threads are set

        torch.set_num_threads(threads)
    scorer = None
    if accept == "scorer":
        scorer = load_scorer(scorer_name, data_dir=data_dir, options=scorer_options)
    loaded = load_model(model, dtype=dtype, device=device)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    return PrepareContext(loaded, scorer, data_dir, dtype, batch_size, progress, log=log)
