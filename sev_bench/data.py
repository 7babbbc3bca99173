"""SEV: pinned download (or a local folder) -> verified files -> `datasets.DatasetDict`.

Files are never vendored: the first use downloads the authors' release at a pinned commit into the
cache and checks each sha256; `--data-dir DIR` / `$SEV_BENCH_DATA_DIR` points at local copies laid out
the same way (`sev.jsonl`, `test_set.jsonl`, `reference_generations/...`).
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import UserError
from .hashing import file_sha256
from .paths import cache_dir
from .prompts import EMOTIONS, VALENCES

PINNED_COMMIT = "cff5b5c68aaec6c4cfb37d4fe9d558131873bc88"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/Aurora-cx/EmotionCircuits-LLM/{PINNED_COMMIT}/"
SOURCE_REPOSITORY = "https://github.com/Aurora-cx/EmotionCircuits-LLM"
REFERENCE_DIR = "reference_generations/llama32_3b_prompting"
_REFERENCE_REMOTE = "outputs/llama32_3b/01_emotion_elicited_generation_prompt_based/labeled"


@dataclass(frozen=True)
class PinnedFile:
    local: str  # path inside the data dir / cache
    remote: str  # path inside the authors' repository at PINNED_COMMIT
    sha256: str


SEV_FILES = {
    "train": PinnedFile(
        "sev.jsonl", "data/sev.jsonl", "7b5313524f54b285c77d31c880b51939cfbcb2db12986bd409da0daae2807a86"
    ),
    "test": PinnedFile(
        "test_set.jsonl",
        "data/test_set.jsonl",
        "9519ae1bffae6df5f5caf4a707c8d5034040bedb591a12bfb89afbbbe5ec2fdc",
    ),
}

# The paper's judged prompting generations (Llama-3.2-3B, GPT-4o-mini judge): scorer training (train)
# and scorer agreement (test). Keyed by (split, accepted|rejected).
REFERENCE_FILES = {
    ("train", "accepted"): PinnedFile(
        f"{REFERENCE_DIR}/sev/accepted.jsonl",
        f"{_REFERENCE_REMOTE}/sev/accepted.jsonl",
        "f0f3c7694e041d40c87f03311dd22744dbf24833206b5af2eccedb643c2e6811",
    ),
    ("train", "rejected"): PinnedFile(
        f"{REFERENCE_DIR}/sev/rejected.jsonl",
        f"{_REFERENCE_REMOTE}/sev/rejected.jsonl",
        "73de3e20e4dc1cd165100e32be5a0084966e789bd02df9ab8a72395163f884c8",
    ),
    ("test", "accepted"): PinnedFile(
        f"{REFERENCE_DIR}/test_set/accepted.jsonl",
        f"{_REFERENCE_REMOTE}/test_set/accepted.jsonl",
        "fd8113222d9ebc33a660e64e29c1d93350ce84e74b14cf48c3656cfb15766b7e",
    ),
    ("test", "rejected"): PinnedFile(
        f"{REFERENCE_DIR}/test_set/rejected.jsonl",
        f"{_REFERENCE_REMOTE}/test_set/rejected.jsonl",
        "5c90cf2f9305d9e8cdcce597c3c5e244f903a8b13d4049f1af552f6fa601cfd1",
    ),
}

THEMES: tuple[str, ...] = (
    "Work/Job",
    "School/Academia",
    "Personal relationships",
    "Customer service/Shopping",
    "Public services/Administration",
    "Health/Medical",
    "Housing/Living facilities",
    "Travel/Transportation",
)

# The dev split: within each theme, in file order, the skeletons at positions 4, 9, 14 and 19
# (every fifth) are held out of `sev.jsonl`. 4 of 20 per theme -> 32 skeletons, 576 rows; the rest
# (128 skeletons) is `train`. Fixed so that tuning never sees the sealed test split.
DEV_EVERY = 5

SPLITS: tuple[str, ...] = ("train", "dev", "test")


def base_url() -> str:
    """Where downloads come from; `$SEV_BENCH_BASE_URL` names a mirror of the authors' repository."""
    url = os.environ.get("SEV_BENCH_BASE_URL", DEFAULT_BASE_URL)
    return url if url.endswith("/") else url + "/"


def data_root(data_dir: str | Path | None = None) -> tuple[Path, bool]:
    """The folder the files are read from, and whether it is the download cache (True) or the
    user's own folder (False; nothing is downloaded into it)."""
    chosen = data_dir or os.environ.get("SEV_BENCH_DATA_DIR")
    if chosen:
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise UserError(f"data dir {root} does not exist or is not a folder")
        return root, False
    return cache_dir() / "data" / PINNED_COMMIT, True


def download_verified(url: str, target: Path, sha256: str, offline_hint: str) -> None:
    """Download `url` to `target` atomically, refusing a file whose sha256 is not `sha256`; a failure is
    a one-line `UserError` ending with `offline_hint` (how to point sev-bench at a local copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".download-", delete=False)
    try:
        with tmp, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                tmp.write(block)
        got = file_sha256(Path(tmp.name))
        if got != sha256:
            raise UserError(f"downloaded {url} has sha256 {got}, expected {sha256}; not used")
        os.replace(tmp.name, target)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"could not download {url} ({exc}); {offline_hint}") from None
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


def _download(pinned: PinnedFile, target: Path) -> None:
    download_verified(
        base_url() + pinned.remote,
        target,
        pinned.sha256,
        f"pass --data-dir DIR or set SEV_BENCH_DATA_DIR to a folder with {pinned.local}",
    )


def fetch(pinned: PinnedFile, data_dir: str | Path | None = None, verify: bool = True) -> Path:
    """A verified local path for one pinned file (downloading it into the cache if needed)."""
    root, is_cache = data_root(data_dir)
    path = root / pinned.local
    if not path.exists():
        if not is_cache:
            raise UserError(f"{path} is missing (expected the SEV file {pinned.local} in the data dir)")
        _download(pinned, path)
    if not path.is_file():
        raise UserError(f"{path} is not a readable file (expected {pinned.local})")
    if verify:
        try:
            got = file_sha256(path)
        except OSError as exc:
            raise UserError(f"{path} is unreadable ({exc.strerror}); expected {pinned.local}") from None
        if got != pinned.sha256:
            raise UserError(
                f"{path} has sha256 {got}, expected {pinned.sha256} (the pinned SEV release); "
                "restore the file or delete it to re-download"
            )
    return path


def iter_jsonl(path: Path, expected: str = "one JSON object per line"):
    """(line number, object) for each non-blank line; a bad line stops with its file, line and `expected`."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: bad JSON ({exc.msg}); expected {expected}") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{number}: got a JSON {type(row).__name__}; expected {expected}")
                yield number, row
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); expected UTF-8 JSON lines") from None


def read_jsonl(path: Path) -> list[dict]:
    """All objects of a JSONL file (see `iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path)]


def parse_skeletons(path: Path) -> list[dict]:
    """Validated skeletons of one SEV file (all fields present, all three valences)."""
    skeletons = read_jsonl(path)
    seen: set[str] = set()
    for number, skeleton in enumerate(skeletons, 1):
        where = f"{path}: skeleton {number}"
        for field in ("skeleton_id", "theme", "scenario"):
            if not isinstance(skeleton.get(field), str) or not skeleton[field].strip():
                raise UserError(f"{where}: missing or empty {field!r}; expected a non-empty string")
        where = f"{path}: skeleton {skeleton['skeleton_id']!r}"
        if skeleton["skeleton_id"] in seen:
            raise UserError(f"{where}: duplicate skeleton_id")
        seen.add(skeleton["skeleton_id"])
        event = skeleton.get("event")
        if not isinstance(event, dict):
            raise UserError(f"{where}: 'event' must be an object with keys {', '.join(VALENCES)}")
        for valence in VALENCES:
            if not isinstance(event.get(valence), str) or not event[valence].strip():
                raise UserError(f"{where}: event lacks valence {valence!r}; expected {', '.join(VALENCES)}")
        if skeleton["theme"] not in THEMES:
            raise UserError(f"{where}: unknown theme {skeleton['theme']!r}; expected one of {', '.join(THEMES)}")
    if not skeletons:
        raise UserError(f"{path} holds no skeletons")
    return skeletons


def split_train_dev(skeletons: list[dict]) -> tuple[list[dict], list[dict]]:
    """The fixed dev hold-out (see DEV_EVERY): every fifth skeleton of each theme, in file order."""
    position_in_theme: dict[str, int] = {}
    train, dev = [], []
    for skeleton in skeletons:
        position = position_in_theme.get(skeleton["theme"], 0)
        position_in_theme[skeleton["theme"]] = position + 1
        (dev if position % DEV_EVERY == DEV_EVERY - 1 else train).append(skeleton)
    return train, dev


def expand(skeletons: list[dict]) -> list[dict]:
    """One row per (skeleton, valence, target emotion); ids follow the authors' `key` format."""
    return [
        {
            "id": f"{s['skeleton_id']}__{valence}__{emotion}",
            "skeleton_id": s["skeleton_id"],
            "theme": s["theme"],
            "scenario": s["scenario"],
            "event": s["event"][valence],
            "valence": valence,
            "target_emotion": emotion,
        }
        for s in skeletons
        for valence in VALENCES
        for emotion in EMOTIONS
    ]


def features():
    from datasets import ClassLabel, Features, Value

    return Features(
        {
            "id": Value("string"),
            "skeleton_id": Value("string"),
            "theme": ClassLabel(names=list(THEMES)),
            "scenario": Value("string"),
            "event": Value("string"),
            "valence": ClassLabel(names=list(VALENCES)),
            "target_emotion": ClassLabel(names=list(EMOTIONS)),
        }
    )


def dataset_fingerprint(data_dir: str | Path | None = None, verify: bool = True) -> dict[str, str]:
    """sha256 of each SEV file actually read (recorded in every result)."""
    return {name: file_sha256(fetch(pinned, data_dir, verify)) for name, pinned in SEV_FILES.items()}


def load_skeletons(data_dir: str | Path | None = None, verify: bool = True) -> dict[str, list[dict]]:
    """Validated skeletons per split. Everything is checked before anything is returned."""
    train_all = parse_skeletons(fetch(SEV_FILES["train"], data_dir, verify))
    test = parse_skeletons(fetch(SEV_FILES["test"], data_dir, verify))
    train, dev = split_train_dev(train_all)
    return {"train": train, "dev": dev, "test": test}


def load_sev(data_dir: str | Path | None = None, verify: bool = True):
    """SEV as a `datasets.DatasetDict` with splits train / dev / test (see module docstring)."""
    from datasets import Dataset, DatasetDict

    skeletons = load_skeletons(data_dir, verify)
    schema = features()
    return DatasetDict({split: Dataset.from_list(expand(skeletons[split]), features=schema) for split in SPLITS})


def load_reference(split: str, data_dir: str | Path | None = None, verify: bool = True) -> list[dict]:
    """The paper's judged prompting replies of one split (train = sev, test = test_set), accepted and
    rejected, each row with `key`, `emotion`, `valence`, `gen_text` and `judge.match`."""
    if split not in ("train", "test"):
        raise UserError(f"reference generations exist for splits train and test, not {split!r}")
    rows = []
    for outcome in ("accepted", "rejected"):
        path = fetch(REFERENCE_FILES[(split, outcome)], data_dir, verify)
        for number, row in iter_jsonl(path):
            judge = row.get("judge")
            if (
                row.get("emotion") not in EMOTIONS
                or not isinstance(row.get("gen_text"), str)
                or not isinstance(judge, dict)
                or judge.get("match") not in (0, 1)
            ):
                raise UserError(
                    f"{path}:{number}: expected fields emotion (one of {', '.join(EMOTIONS)}), gen_text "
                    "and judge.match (0 or 1)"
                )
            rows.append(row)
    return rows


def count_table(dataset_dict) -> dict[str, dict[str, dict[str, int]]]:
    """Row counts per split by theme, valence and target emotion (for `sev-bench data info`)."""
    table = {}
    for split, dataset in dataset_dict.items():
        split_counts = {"rows": {"all": len(dataset)}}
        for column in ("theme", "valence", "target_emotion"):
            names = dataset.features[column].names
            counts = {name: 0 for name in names}
            for label in dataset[column]:
                counts[names[label]] += 1
            split_counts[column] = counts
        split_counts["rows"]["skeletons"] = len(set(dataset["skeleton_id"]))
        table[split] = split_counts
    return table


DATASET_CARD = """---
license: other
license_name: unstated
language:
- en
pretty_name: SEV (Scenario-Event with Valence)
task_categories:
- text-generation
configs:
- config_name: default
  data_files:
{data_files}
---

# SEV: Scenario-Event with Valence

Exported by sev-bench {version}. Source: the authors' release of "Do LLMs 'Feel'? Emotion Circuits
Discovery and Control" (arXiv 2510.11328), {repository} at commit `{commit}`.

**Licence note.** The authors have not stated a licence for SEV. Check with them before you
redistribute it (for example before `push_to_hub` to a public repository).

Each row is one generation request: a neutral first-person scenario, an outcome event of one valence,
and the target emotion a control method must make the model express. Each skeleton (scenario with three
events) expands to 3 valences x 6 emotions = 18 rows.

## Splits

| split | skeletons | rows | source |
| --- | --- | --- | --- |
{split_rows}

`dev` is a fixed hold-out of `sev.jsonl`: within each theme, in file order, every fifth skeleton
(positions 4, 9, 14, 19). Tune hyper-parameters on `dev`; report on `test`.

## Features

| feature | type |
| --- | --- |
{feature_rows}

## Source files (sha256)

{file_rows}
"""


SCORING_SECTION = """
## Scoring replies

sev-bench scores every reply with the emotion classifier in [`scorer/`](scorer/README.md) ({scorer_id},
sha256 `{scorer_sha256}`): a standard Hugging Face text-classification model over the six emotions and
`none`. A reply is a hit when the classifier's top label equals the row's `target_emotion`; `none` (no
emotion) never is. To score replies the same way outside sev-bench:

```python
from transformers import pipeline
classify = pipeline("text-classification", model="scorer", top_k=None)
hit = max(classify(reply)[0], key=lambda s: s["score"])["label"] == target_emotion
```
"""


def export(dataset_dict, out_dir: Path, fingerprint: dict[str, str], scorer=None) -> None:
    """`save_to_disk` + parquet + a dataset card, so `out_dir` can go to `push_to_hub` as it is. With
    `scorer`, the card says how replies are scored and links the scorer exported beside it (`scorer/`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_dict.save_to_disk(str(out_dir / "hf_dataset"))
    (out_dir / "data").mkdir(exist_ok=True)
    for split, dataset in dataset_dict.items():
        dataset.to_parquet(str(out_dir / "data" / f"{split}.parquet"))
    sources = {"train": "sev.jsonl (minus dev)", "dev": "sev.jsonl (hold-out)", "test": "test_set.jsonl"}
    card = DATASET_CARD.format(
        version=__version__,
        repository=SOURCE_REPOSITORY,
        commit=PINNED_COMMIT,
        data_files="\n".join(f"  - split: {split}\n    path: data/{split}.parquet" for split in dataset_dict),
        split_rows="\n".join(
            f"| {split} | {len(set(ds['skeleton_id']))} | {len(ds)} | {sources[split]} |"
            for split, ds in dataset_dict.items()
        ),
        feature_rows="\n".join(
            f"| `{name}` | {_describe_feature(feature)} |"
            for name, feature in next(iter(dataset_dict.values())).features.items()
        ),
        file_rows="\n".join(f"- `{SEV_FILES[name].local}`: `{sha}`" for name, sha in fingerprint.items()),
    )
    if scorer is not None:
        card += SCORING_SECTION.format(scorer_id=scorer.id, scorer_sha256=scorer.sha256)
    (out_dir / "README.md").write_text(card, encoding="utf-8")


def _describe_feature(feature) -> str:
    names = getattr(feature, "names", None)
    if names:
        return "ClassLabel: " + ", ".join(names)
    return f"Value({feature.dtype})"


def select_rows(dataset, emotions: list[str], valences: list[str], limit: int | None) -> list[dict]:
    """Rows of one split, filtered, in theme-interleaved order: the first skeleton of every theme, then
    the second of every theme, ... (each skeleton's rows valence-major). So `limit=144` covers one
    skeleton of each of the 8 themes in all valences and emotions; then the first `limit` rows."""
    valence_names = dataset.features["valence"].names
    emotion_names = dataset.features["target_emotion"].names
    theme_names = dataset.features["theme"].names
    position_of_skeleton: dict[str, tuple[int, int]] = {}
    per_theme: dict[int, int] = {}
    rows = []
    for row in dataset:
        if row["skeleton_id"] not in position_of_skeleton:
            position = per_theme.get(row["theme"], 0)
            per_theme[row["theme"]] = position + 1
            position_of_skeleton[row["skeleton_id"]] = (position, row["theme"])
        row = {
            **row,
            "valence": valence_names[row["valence"]],
            "target_emotion": emotion_names[row["target_emotion"]],
            "theme": theme_names[row["theme"]],
        }
        if row["valence"] in valences and row["target_emotion"] in emotions:
            rows.append(row)
    rows.sort(key=lambda row: position_of_skeleton[row["skeleton_id"]])  # stable: keeps row order within
    return rows[:limit] if limit is not None else rows
