"""`hf-classifier`: any Hugging Face text-classification model, its labels mapped onto the six emotions.

The model is a hub id or a local dir (option `model`, CLI `--scorer-model`; default
`j-hartmann/emotion-english-distilroberta-base`). Only safetensors weights are loaded (no pickle). Each
model label maps to one of the six emotions, to `none` (no emotion: the scorer then has a seventh label
`none`) or to JSON `null` (dropped: the remaining probabilities are renormalised). Several model labels
mapped to one emotion add up. The mapping is, in order: option `label_map` (`--label-map`: a JSON file,
an inline JSON object or a dict), the built-in one for the model id, else the common names
(anger/angry, disgust/disgusted, fear/fearful/scared, joy/happy/happiness, sadness/sad,
surprise/surprised, neutral/none/no emotion), case-insensitive. A model label left unmapped is a
`UserError`.

The scorer's sha256 hashes the mapping, the max length and the sha256 of every weights, config and
tokenizer file of the model dir, so it changes with any of them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..hashing import file_sha256
from ..prompts import EMOTIONS
from .base import SCORERS, Scorer
from .options import check_options

NAME = "hf-classifier"
FORMAT = "sev_bench.hf-classifier/1"
DEFAULT_MODEL = "j-hartmann/emotion-english-distilroberta-base"
NONE = "none"
OUTCOMES = (*EMOTIONS, NONE)
BATCH_SIZE = 32
MAX_LENGTH = 512
OPTIONS = ("model", "label_map", "batch_size", "max_length", "device")

BUILTIN_MAPS: dict[str, dict[str, str | None]] = {
    DEFAULT_MODEL: {
        "anger": "anger",
        "disgust": "disgust",
        "fear": "fear",
        "joy": "happiness",
        "neutral": NONE,
        "sadness": "sadness",
        "surprise": "surprise",
    },
}
COMMON_NAMES: dict[str, str] = {
    "anger": "anger",
    "angry": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "joy": "happiness",
    "happy": "happiness",
    "happiness": "happiness",
    "sadness": "sadness",
    "sad": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": NONE,
    "none": NONE,
    "no emotion": NONE,
}
# Files of a model dir that make up its identity (weights, config, tokenizer).
IDENTITY_PATTERNS = ("*.safetensors", "config.json", "tokenizer*.json", "vocab.*", "merges.txt", "*.model")
SNAPSHOT_PATTERNS = ["*.safetensors", "*.json", "vocab.*", "merges.txt", "*.model", "*.txt"]


def _read_label_map(spec) -> tuple[dict[str, str | None], str]:
    """(mapping, where it came from) from a dict, an inline JSON object or a JSON file path."""
    if isinstance(spec, dict):
        return dict(spec), "option"
    text = str(spec)
    if text.lstrip().startswith("{"):
        source, raw = "inline --label-map", text
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"--label-map {text}: no such file; expected a JSON object model label -> emotion")
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--label-map {text}: unreadable ({exc})") from None
        source = str(path)
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"--label-map {source}: bad JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(mapping, dict):
        raise UserError(f"--label-map {source}: expected a JSON object model label -> emotion")
    return mapping, source


def resolve_mapping(model_labels: list[str], model_id: str, label_map=None) -> tuple[dict[str, str | None], str]:
    """Map every model label onto an outcome (an emotion, `none`, or None = dropped); (mapping, source)."""
    if label_map is not None:
        given, source = _read_label_map(label_map)
    elif model_id in BUILTIN_MAPS:
        given, source = BUILTIN_MAPS[model_id], f"built-in for {model_id}"
    else:
        given, source = {}, "common names"
    lowered = {str(key).lower(): value for key, value in given.items()}
    known = {label.lower() for label in model_labels}
    unknown_keys = [key for key in given if str(key).lower() not in known]
    if unknown_keys:
        raise UserError(
            f"label map ({source}) names {', '.join(map(repr, unknown_keys))}, which the model does not have "
            f"(its labels: {', '.join(model_labels)})"
        )
    mapping: dict[str, str | None] = {}
    for label in model_labels:
        if label in given:
            target = given[label]
        elif label.lower() in lowered:
            target = lowered[label.lower()]
        elif label_map is None and label.lower() in COMMON_NAMES:
            target = COMMON_NAMES[label.lower()]
        else:
            raise UserError(
                f"model label {label!r} has no emotion (mapping: {source}); give --label-map FILE with a JSON "
                f"object mapping each of {', '.join(model_labels)} to one of {', '.join(OUTCOMES)} or null"
            )
        if target is not None and target not in OUTCOMES:
            raise UserError(
                f"label map ({source}) maps {label!r} to {target!r}; expected one of {', '.join(OUTCOMES)} or null"
            )
        mapping[label] = target
    if not any(target in EMOTIONS for target in mapping.values()):
        raise UserError(f"label map ({source}) maps no model label to any of {', '.join(EMOTIONS)}")
    return mapping, source


def _model_dir(model: str) -> tuple[Path, str | None]:
    """A local dir for `model` (a dir, or a hub id fetched or found in the HF cache) and its hub revision."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, None
    if path.exists() or model.startswith((".", "/", "~")):
        raise UserError(f"--scorer-model {model}: no such directory; expected a hub id or a local model dir")
    try:
        from huggingface_hub import snapshot_download  # heavy: loaded only when the scorer is trained or used

        local = Path(snapshot_download(repo_id=model, allow_patterns=SNAPSHOT_PATTERNS))
    except Exception as exc:  # offline without a cached copy, unknown repo, gated repo, ...
        message = " ".join(str(exc).split())[:300]
        raise UserError(
            f"--scorer-model {model}: cannot fetch it from the Hugging Face hub ({type(exc).__name__}: {message})"
        ) from None
    return local, local.name  # snapshot dirs are named by their commit


def _identity_files(directory: Path) -> dict[str, str]:
    files = sorted({p for pattern in IDENTITY_PATTERNS for p in directory.glob(pattern) if p.is_file()})
    return {p.name: file_sha256(p) for p in files}


@SCORERS.register(NAME)
class HFClassifier(Scorer):
    name = NAME
    description = (
        "any Hugging Face text-classification model (--scorer-model ID|DIR, default "
        f"{DEFAULT_MODEL}), labels mapped onto the six emotions (+ none; --label-map FILE); safetensors only"
    )

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        model_dir: Path,
        revision: str | None,
        mapping: dict[str, str | None],
        mapping_source: str,
        batch_size: int = BATCH_SIZE,
        max_length: int = MAX_LENGTH,
    ):
        import torch  # heavy: loaded only when the scorer is trained or used

        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.model_dir = model_dir
        self.revision = revision
        self.mapping = mapping
        self.mapping_source = mapping_source
        self.batch_size = batch_size
        self.max_length = max_length
        self.labels = EMOTIONS + ((NONE,) if NONE in mapping.values() else ())
        model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        aggregate = np.zeros((len(model_labels), len(self.labels)))
        for i, label in enumerate(model_labels):
            if mapping[label] is not None:
                aggregate[i, self.labels.index(mapping[label])] = 1.0
        self._aggregate = aggregate
        self._multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
        self._lock = threading.Lock()
        self._device = next(model.parameters()).device
        self._torch = torch
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self.files_sha256 = _identity_files(model_dir)
        identity = {
            "format": FORMAT,
            "files_sha256": self.files_sha256,
            "mapping": mapping,
            "labels": list(self.labels),
            "max_length": max_length,
        }
        self._sha256 = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()

    @classmethod
    def load(cls, data_dir=None, verbose: bool = True, options: dict | None = None) -> HFClassifier:
        options = check_options(NAME, options, OPTIONS)
        model_id = str(options.get("model") or DEFAULT_MODEL)
        batch_size = int(options.get("batch_size", BATCH_SIZE))
        max_length = int(options.get("max_length", MAX_LENGTH))
        if batch_size < 1 or max_length < 8:
            raise UserError(f"scorer {NAME}: batch_size must be >= 1 and max_length >= 8")
        model_dir, revision = _model_dir(model_id)
        if not any(model_dir.glob("*.safetensors")):
            raise UserError(
                f"--scorer-model {model_id}: no .safetensors weights in {model_dir}; only safetensors are loaded "
                "(convert the checkpoint, never load pickled weights)"
            )
        try:
            config_labels = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("id2label")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"--scorer-model {model_id}: unreadable config.json ({exc})") from None
        if not isinstance(config_labels, dict) or not config_labels:
            raise UserError(f"--scorer-model {model_id}: config.json has no id2label; not a classification model")
        model_labels = [str(config_labels[key]) for key in sorted(config_labels, key=int)]
        mapping, source = resolve_mapping(model_labels, model_id, options.get("label_map"))

        import torch  # heavy: loaded only when the scorer is trained or used
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = str(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), use_safetensors=True, dtype=torch.float32
            )
            model.to(device).eval()
        except Exception as exc:
            message = " ".join(str(exc).split())[:300]
            raise UserError(f"--scorer-model {model_id}: cannot load it ({type(exc).__name__}: {message})") from None
        loaded_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if loaded_labels != model_labels:
            raise UserError(f"--scorer-model {model_id}: id2label {loaded_labels} differs from config.json")
        max_length = min(max_length, int(getattr(tokenizer, "model_max_length", max_length) or max_length))
        return cls(model, tokenizer, model_id, model_dir, revision, mapping, source, batch_size, max_length)

    def model_probs(self, texts: list[str]) -> np.ndarray:
        """The model's own probabilities [N, num_labels] (softmax; sigmoid for multi-label models)."""
        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                inputs = {key: value for key, value in batch.items() if key in self._forward_args}
                self._fill_empty(inputs)
                inputs = {key: value.to(self._device) for key, value in inputs.items()}
                logits = self.model(**inputs).logits.double()
                probs = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
                out.append(probs.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self._aggregate.shape[0]))

    def _fill_empty(self, inputs: dict) -> None:
        """A text with no tokens (an empty text, with a tokenizer that adds no special tokens) becomes
        one pad token at position 0, in a batch as alone, so its scores do not depend on its batch."""
        torch = self._torch
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            return
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if ids.shape[1] == 0:
            ids = torch.full((ids.shape[0], 1), pad, dtype=ids.dtype)
            mask = torch.zeros_like(ids)
            if "token_type_ids" in inputs:
                inputs["token_type_ids"] = torch.zeros_like(ids)
        empty = mask.sum(dim=1) == 0
        if bool(empty.any()):
            ids, mask = ids.clone(), mask.clone()
            ids[empty, 0] = pad
            mask[empty, 0] = 1
        inputs["input_ids"], inputs["attention_mask"] = ids, mask

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        texts = self.checked_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)))
        mapped = self.model_probs(texts) @ self._aggregate
        total = mapped.sum(axis=1, keepdims=True)
        uniform = np.full_like(mapped, 1.0 / mapped.shape[1])
        return np.where(total > 0, mapped / np.where(total > 0, total, 1.0), uniform)

    def info(self) -> dict:
        info = super().info()
        info["model"] = {
            "id": self.model_id,
            "dir": str(self.model_dir) if Path(self.model_id).expanduser().is_dir() else None,
            "revision": self.revision,
            "architecture": (self.model.config.architectures or [type(self.model).__name__])[0],
            "files_sha256": self.files_sha256,
        }
        info["label_map"] = {"mapping": self.mapping, "source": self.mapping_source}
        info["max_length"] = self.max_length
        return info
