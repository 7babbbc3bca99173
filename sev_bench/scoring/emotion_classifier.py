"""`minilm-emotions`: the default scorer. MiniLM-L6 fine-tuned as a stock `BertForSequenceClassification` over
the six emotions plus `none`, on human-written emotional text (GoEmotions) and on SEV's train-split replies.

Why: a scorer trained only on one model's prompted replies (`minilm-finetuned`) learns that model's style
("I'm so angry that...") and misreads plainer or stranger text: steered replies, other models, short
statements. GoEmotions gives 40k comments written by people, labelled by people, and grouped by its authors
onto exactly SEV's label set (`sev_bench.goemotions`); SEV's judge-accepted train replies keep the scorer
fluent in the benchmark's own register; SEV's scenario and neutral-event sentences teach `none` on the kind
of polite, informative text a model writes when it carries no emotion.

Training set (`training_rows`), built deliberately:
- GoEmotions train: comments whose labels fall into one group only (ambiguous ones are left out: a softmax
  over one label cannot learn "anger and joy"). Its imbalance (happiness 15.2k, `none` 12.8k, disgust 0.5k)
  is cut by capping each class at `GOEMOTIONS_CAP` comments (a seeded sample) and by class weights in the
  loss (inverse square root of frequency, `CLASS_WEIGHT_POWER`), so the rare fear and disgust are learnt
  without being over-predicted.
- SEV train split: the judge-accepted reference replies minus the dev skeletons' (target emotion as label),
  and each train skeleton's scenario and neutral event (`none`).
- Lexicon statements (`lexicon_statements`): templated sentences pairing each emotion's plain words and
  behaviours with train-split events of every valence, so the emotion words, not the event, decide; and
  courteous but emotionless sentences as `none` (politeness is not happiness).

Fine-tuning: all layers but the token embeddings; AdamW, `EPOCHS` epochs, warm-up then linearly decaying
learning rate, length-bucketed batches (less padding) in a seeded order, one CPU thread (the same bytes on
any machine with the same torch, and no OpenMP threads spinning against other processes). Then one
temperature is fitted on held-out dev data (GoEmotions dev and the SEV dev skeletons' reference replies,
never the test split) and folded into the classifier layer, so the saved model's plain softmax is the
calibrated one and a stock `transformers.pipeline("text-classification")` gives the same probabilities.
The choices above (cap, class weights, lexicon statements) were made on dev data: GoEmotions dev, the SEV dev
skeletons' replies and `benchmarks/data/plain_statements_dev.jsonl` (README, "Scoring").

The model is a Hugging Face dir (config with `id2label`, `model.safetensors`, tokenizer); the scorer's
identity is the sha256 of config and weights together, and the config's `sev_bench` entry records how it
was trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import data, goemotions
from ..atomic import write_bytes_atomic
from ..errors import UserError
from ..hashing import file_sha256
from ..paths import cache_dir
from ..prompts import EMOTIONS
from . import lexicon_statements
from .base import SCORERS, Scorer
from .minilm import encoder_dir, encoder_record, encoder_stale_reason, softmax
from .training import load_trained

NAME = "minilm-emotions"
FORMAT = "sev_bench.minilm-emotions/1"
LABELS = (*EMOTIONS, "none")
GOEMOTIONS_CAP = 3000  # comments per class at most (see module docstring)
LEXICON_PER_EMOTION = 300  # templated plain statements per emotion (`lexicon_statements`)
EPOCHS = 2
BATCH_SIZE = 32
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
WARMUP_SHARE = 0.06
CLASS_WEIGHT_POWER = 0.5  # loss weight of a label: (n / (labels * n_label)) ** power; 1 = "balanced"
TRAIN_MAX_TOKENS = 96  # GoEmotions comments and SEV replies are short; longer ones are cut in training only
MAX_TOKENS = 256
TRAIN_THREADS = 1  # one thread: the same bytes on any core count, and no OpenMP spinning on a busy machine
BUCKET = 50  # batches per length bucket
INFER_BATCH_SIZE = 64
WEIGHT_FILES = ("config.json", "model.safetensors")


def default_dir() -> Path:
    return cache_dir() / "scorers" / NAME


def model_sha256(model_dir: Path) -> str:
    """The identity of a saved model: sha256 over its config (labels, training record) and weights."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        digest.update(name.encode() + b"\0" + file_sha256(model_dir / name).encode() + b"\n")
    return digest.hexdigest()


def sev_rows(split: str, data_dir=None) -> tuple[list[str], list[str]]:
    """SEV texts and labels of the `train` (training) or `dev` (calibration) skeletons: the judge-accepted
    reference replies of those skeletons, and their scenario and neutral-event sentences as `none`."""
    skeletons = data.load_skeletons(data_dir)[split]
    ids = {s["skeleton_id"] for s in skeletons}
    replies = [
        r for r in data.load_reference("train", data_dir) if r["judge"]["match"] == 1 and r["skeleton_id"] in ids
    ]
    texts = [r["gen_text"] for r in replies]
    labels = [r["emotion"] for r in replies]
    for skeleton in skeletons:
        texts += [skeleton["scenario"], skeleton["event"]["neutral"]]
        labels += ["none", "none"]
    return texts, labels


def goemotions_rows(split: str, cap: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Unambiguous GoEmotions comments of `split` with their sev-bench label, at most `cap` per label."""
    by_label: dict[str, list[str]] = {label: [] for label in LABELS}
    for comment in goemotions.load(split):
        if not comment.ambiguous:
            by_label[comment.groups[0]].append(comment.text)
    rng = random.Random(seed)
    texts, labels = [], []
    for label, members in by_label.items():
        if cap is not None and len(members) > cap:
            members = rng.sample(members, cap)
        texts += members
        labels += [label] * len(members)
    return texts, labels


def lexicon_rows(data_dir=None, seed: int = 0, per_emotion: int = LEXICON_PER_EMOTION) -> tuple[list[str], list[str]]:
    """Templated plain statements (`lexicon_statements`) over the train skeletons' events of all valences, and
    as many courteous but emotionless sentences (`none`) built on the train skeletons' neutral sentences."""
    if not per_emotion:
        return [], []
    skeletons = data.load_skeletons(data_dir)["train"]
    events = [s["event"][v] for s in skeletons for v in ("positive", "neutral", "negative")]
    texts, labels = lexicon_statements.generate(events, per_emotion, seed)
    facts = [s["scenario"] for s in skeletons] + [s["event"]["neutral"] for s in skeletons]
    polite = lexicon_statements.courteous_none(facts, per_emotion, seed)
    return texts + polite, labels + ["none"] * len(polite)


def training_rows(data_dir=None, seed: int = 0, cap: int | None = GOEMOTIONS_CAP) -> tuple[list[str], list[int], dict]:
    """Texts and label indices (into `LABELS`) of the training set, and a description of it."""
    go_texts, go_labels = goemotions_rows("train", cap, seed)
    sev_texts, sev_labels = sev_rows("train", data_dir)
    lex_texts, lex_labels = lexicon_rows(data_dir, seed)
    texts = go_texts + sev_texts + lex_texts
    labels = [LABELS.index(label) for label in go_labels + sev_labels + lex_labels]
    described = {
        "goemotions": {
            "split": "train",
            "rows": "comments whose labels fall into one Ekman group (ambiguous ones left out)",
            "cap_per_label": cap,
            "rows_by_label": {label: go_labels.count(label) for label in LABELS},
            "files_sha256": goemotions.fingerprint(),
            "source": goemotions.SOURCE,
        },
        "sev": {
            "split": "train (dev skeletons excluded)",
            "rows": "judge-accepted reference replies; scenario and neutral event of each skeleton as none",
            "rows_by_label": {label: sev_labels.count(label) for label in LABELS},
            "reference": data.REFERENCE_DIR,
        },
        "lexicon_statements": {
            "rows": "templated plain statements: each emotion's words paired with train-split events of any valence",
            "rows_by_label": {label: lex_labels.count(label) for label in LABELS},
        },
        "rows_by_label": {label: labels.count(i) for i, label in enumerate(LABELS)},
    }
    return texts, labels, described


def _length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (less padding): shuffle, sort within buckets of `BUCKET` batches, then
    shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * BUCKET
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches


def _fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of `labels` (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    low, high = math.log(0.2), math.log(5.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return round(math.exp((low + high) / 2), 4)


def _logits(model, tokenizer, texts: list[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    import torch  # heavy: loaded only when the scorer is trained or used

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), len(LABELS)))
    with torch.inference_mode():
        for start in range(0, len(order), INFER_BATCH_SIZE):
            chunk = order[start : start + INFER_BATCH_SIZE]
            batch = tokenizer(
                [texts[i] for i in chunk], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
            )
            out[chunk] = model(**batch).logits.double().numpy()
    return out


def _every_kth(texts: list, labels: list, max_rows: int) -> tuple[list, list]:
    """At most `max_rows` rows spread evenly over the set (quick mechanics tests only)."""
    keep = [int(i * len(texts) / max_rows) for i in range(min(max_rows, len(texts)))]
    return [texts[i] for i in keep], [labels[i] for i in keep]


@contextmanager
def _training_threads():
    """`TRAIN_THREADS` torch threads and transformers' notices silenced (the "classifier weights newly
    initialised" one is expected) while training; both restored afterwards."""
    import torch  # heavy: loaded only when the scorer is trained or used
    from transformers.utils import logging as hf_logging

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)


def _fine_tune(model, tokenizer, texts, labels, lengths, class_weights, seed, epochs, progress) -> list[float]:
    """Fine-tune `model` in place on (texts, labels), all layers but the token embeddings; the losses per
    step. Call it under `torch.manual_seed(seed)`: dropout draws from torch's generator, in step order."""
    import torch  # heavy: loaded only when the scorer is trained or used

    for parameter in model.bert.embeddings.word_embeddings.parameters():
        parameter.requires_grad = False  # 30k x 384 rows that a few epochs barely move: half the step time
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )
    rng = random.Random(seed)
    plan = [_length_bucketed_batches(lengths, BATCH_SIZE, rng) for _ in range(epochs)]
    total = sum(len(batches) for batches in plan)
    warmup = max(1, int(WARMUP_SHARE * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup)))
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float32))
    target = torch.tensor(labels)
    model.train()
    losses = []
    bar = tqdm(total=total, desc=f"fine-tuning {NAME}", unit="step", disable=not progress)
    for batches in plan:
        for index in batches:
            batch = tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=TRAIN_MAX_TOKENS,
                return_tensors="pt",
            )
            loss = loss_fn(model(**batch).logits, target[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
    bar.close()
    return losses


def _training_record(described, epochs, class_weights, seed, max_rows, losses, temperature, n_dev) -> dict:
    """The `sev_bench` entry of the saved config: how the model was trained and calibrated."""
    import torch  # heavy: loaded only when the scorer is trained or used

    return {
        "format": FORMAT,
        "scorer": NAME,
        "labels": list(LABELS),
        "encoder": encoder_record(),
        "training": {
            **described,
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "warmup_share": WARMUP_SHARE,
            "weight_decay": WEIGHT_DECAY,
            "frozen": "token embeddings",
            "class_weights": {label: round(float(w), 6) for label, w in zip(LABELS, class_weights)},
            "max_tokens": TRAIN_MAX_TOKENS,
            "seed": seed,
            "threads": TRAIN_THREADS,
            "max_rows": max_rows,
            "torch_version": torch.__version__,
            "final_loss_mean_last_50": round(float(np.mean(losses[-50:])), 6),
        },
        "calibration": {
            "temperature": temperature,
            "fitted_on": "GoEmotions dev (unambiguous comments) + SEV dev skeletons' accepted replies and none texts",
            "n": n_dev,
            "folded_into": "classifier.weight and classifier.bias",
        },
    }


def train(
    out_dir: str | Path | None = None,
    data_dir=None,
    seed: int = 0,
    progress: bool = True,
    epochs: int = EPOCHS,
    cap: int | None = GOEMOTIONS_CAP,
    max_rows: int | None = None,
) -> Path:
    """Fine-tune, calibrate and save the scorer (see module docstring) into `out_dir` (default: the cache's
    `scorers/minilm-emotions/`), replacing it atomically file by file. `max_rows` (every k-th training
    row, and as many calibration rows) exists for quick mechanics tests; the scorer is trained without it.
    Bit for bit reproducible: the seeded steps keep one order (see `_fine_tune`)."""
    import torch  # heavy (torch, transformers): loaded only when the scorer is trained or used
    from transformers import AutoTokenizer, BertForSequenceClassification

    out = Path(out_dir) if out_dir is not None else default_dir()
    texts, labels, described = training_rows(data_dir, seed, cap)
    dev_go_texts, dev_go_labels = goemotions_rows("dev", None, seed)
    dev_sev_texts, dev_sev_labels = sev_rows("dev", data_dir)
    dev_texts, dev_labels = dev_go_texts + dev_sev_texts, dev_go_labels + dev_sev_labels
    if max_rows is not None:
        texts, labels = _every_kth(texts, labels, max_rows)
        dev_texts, dev_labels = _every_kth(dev_texts, dev_labels, max_rows)
    encoder_path = encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path))
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=TRAIN_MAX_TOKENS)["input_ids"]]
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64)
    class_weights = (len(labels) / (len(LABELS) * np.maximum(counts, 1.0))) ** CLASS_WEIGHT_POWER

    with _training_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # before the classifier layer is initialised: its weights come from it
        model = BertForSequenceClassification.from_pretrained(
            str(encoder_path),
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
        ).float()
        losses = _fine_tune(model, tokenizer, texts, labels, lengths, class_weights, seed, epochs, progress)
        model.eval()
        dev_logits = _logits(model, tokenizer, dev_texts)

    dev_index = np.array([LABELS.index(label) for label in dev_labels])
    temperature = _fit_temperature(dev_logits, dev_index)
    with torch.no_grad():  # fold the temperature into the classifier: the plain softmax is the calibrated one
        model.classifier.weight /= temperature
        model.classifier.bias /= temperature
    model.config.sev_bench = _training_record(
        described, epochs, class_weights, seed, max_rows, losses, temperature, len(dev_texts)
    )
    _save(model, tokenizer, out)
    return out


def _save(model, tokenizer, out: Path) -> None:
    """Write the HF dir file by file, each atomically. Old weights go first and new ones last, so a dir
    whose writing was cut off has no weights: it counts as not trained (and retrains) instead of loading
    old weights under a new config."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        names = sorted(p.name for p in Path(staging).iterdir() if p.is_file() and p.name != "model.safetensors")
        for name in [*names, "model.safetensors"]:
            write_bytes_atomic(out / name, (Path(staging) / name).read_bytes())


@SCORERS.register(NAME)
class MiniLMEmotions(Scorer):
    name = NAME
    description = (
        "MiniLM-L6 fine-tuned (six emotions + none) on GoEmotions (human-written, Ekman-grouped) and the "
        "judge-accepted SEV train replies; temperature-calibrated on dev data"
    )
    labels = LABELS

    def __init__(self, model_dir: Path, model, tokenizer, metadata: dict) -> None:
        self.model_dir = model_dir
        self.weights_path = model_dir / "model.safetensors"
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self._lock = threading.Lock()  # the judge-style thread pools of callers share one model

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = model_sha256(self.model_dir)
        return self._sha256

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> MiniLMEmotions:
        from transformers import AutoTokenizer, BertForSequenceClassification  # heavy: loaded only when used

        model_dir = Path(model_dir)
        missing = [name for name in WEIGHT_FILES if not (model_dir / name).is_file()]
        if missing:
            raise UserError(
                f"{model_dir} lacks {', '.join(missing)}; expected a {NAME} model dir (delete it to retrain)"
            )
        try:
            metadata = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("sev_bench") or {}
            if metadata.get("format") != FORMAT or tuple(metadata.get("labels", ())) != LABELS:
                raise ValueError(f"format {metadata.get('format')!r} with labels {metadata.get('labels')}")
            model = BertForSequenceClassification.from_pretrained(str(model_dir), use_safetensors=True)
            if [model.config.id2label[i] for i in range(model.config.num_labels)] != list(LABELS):
                raise ValueError(f"id2label {model.config.id2label} is not {list(LABELS)}")
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as exc:
            raise UserError(f"{model_dir} is not a valid {NAME} model dir ({exc}); delete it to retrain") from None
        model.eval()
        return cls(model_dir, model, tokenizer, metadata)

    def stale_reason(self) -> str | None:
        return encoder_stale_reason(self.metadata)

    @classmethod
    def load(cls, data_dir=None, verbose: bool = True) -> MiniLMEmotions:
        return load_trained(
            cls,
            default_dir(),
            lambda data_dir_, out: train(out, data_dir=data_dir_, progress=verbose),
            "fine-tuning it on GoEmotions and SEV (about 15 minutes on one CPU thread, once)",
            data_dir,
            verbose,
            loader=cls.from_dir,
            present=lambda path: (path / "model.safetensors").is_file(),
        )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        texts = self.checked_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)))
        with self._lock:
            return softmax(_logits(self.model, self.tokenizer, texts))

    def info(self) -> dict:
        info = super().info()
        info["encoder"] = self.metadata.get("encoder")
        info["training"] = self.metadata.get("training")
        info["calibration"] = self.metadata.get("calibration")
        return info
