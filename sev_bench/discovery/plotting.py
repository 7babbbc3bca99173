"""What the discovery reports' figures share: a headless pyplot and PNGs that rebuild to the same bytes."""

from __future__ import annotations

PNG_METADATA = {"Software": None}  # no matplotlib version stamp: rebuilding gives the same bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    # Imported here: matplotlib is heavy and only the report writers need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
