"""GoEmotions (Demszky et al., ACL 2020): human-written Reddit comments labelled for 27 emotions or neutral.

sev-bench uses it to train and check scorers on emotional text that no language model wrote. Like SEV, it
is never vendored: the first use downloads the authors' files at a pinned commit of
google-research/google-research (Apache-2.0) into the cache and checks each sha256;
`$SEV_BENCH_GOEMOTIONS_DIR` points at a local folder with the same five files instead (offline use, CI).

Labels go through the authors' own Ekman grouping (`ekman_mapping.json`), which lands on exactly SEV's label
set: anger, disgust, fear, joy (SEV's happiness), sadness, surprise, and neutral (sev-bench's `none`). A
comment whose labels fall into more than one group is *ambiguous*: `groups` holds all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .data import download_verified
from .errors import UserError
from .hashing import file_sha256
from .paths import cache_dir

PINNED_COMMIT = "2adf640a14f11025ae5a9d0ec493b78530d276d3"
BASE_URL = f"https://raw.githubusercontent.com/google-research/google-research/{PINNED_COMMIT}/goemotions/data/"
SOURCE = "https://github.com/google-research/google-research/tree/master/goemotions (Apache-2.0)"
CITATION = 'Demszky et al., "GoEmotions: A Dataset of Fine-Grained Emotions", ACL 2020'
ENV_DIR = "SEV_BENCH_GOEMOTIONS_DIR"

FILES_SHA256 = {
    "train.tsv": "1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5",
    "dev.tsv": "575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62",
    "test.tsv": "0587b2dd8b27b97352adbfc3fb083d46005c8946657fdc2b1ca8b1cc7f1f8be4",
    "emotions.txt": "45c3ef86782d2a4d7fedcd6d8c111aa0d0e94720689bd164fac94fefb4495a89",
    "ekman_mapping.json": "d6b1fea382917c1685c42e1324a0344106be9390f52a3850ce032656d103a328",
}
SPLITS = ("train", "dev", "test")

# Ekman group (the authors' names) -> sev-bench label.
EKMAN_TO_SEV = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "joy": "happiness",
    "sadness": "sadness",
    "surprise": "surprise",
    "neutral": "none",
}


@dataclass(frozen=True)
class Comment:
    id: str
    text: str
    emotions: tuple[str, ...]  # the fine-grained labels, e.g. ("gratitude", "joy")
    groups: tuple[str, ...]  # their sev-bench labels (Ekman grouping), sorted, without repeats

    @property
    def ambiguous(self) -> bool:
        return len(self.groups) > 1


def root() -> tuple[Path, bool]:
    """The folder the files are read from, and whether it is the download cache."""
    chosen = os.environ.get(ENV_DIR)
    if chosen:
        folder = Path(chosen).expanduser()
        if not folder.is_dir():
            raise UserError(f"${ENV_DIR} is {folder}, which is not a folder; point it at the GoEmotions files")
        return folder, False
    return cache_dir() / "goemotions" / PINNED_COMMIT, True


def fetch(name: str) -> Path:
    """A verified local path of one GoEmotions file, downloading it into the cache on first use."""
    folder, is_cache = root()
    path = folder / name
    if not path.is_file():
        if not is_cache:
            raise UserError(f"{path} is missing (expected the GoEmotions file {name} in ${ENV_DIR})")
        download_verified(
            BASE_URL + name, path, FILES_SHA256[name], f"set ${ENV_DIR} to a folder with the GoEmotions files"
        )
    got = file_sha256(path)
    if got != FILES_SHA256[name]:
        raise UserError(f"{path} has sha256 {got}, expected {FILES_SHA256[name]} (the pinned GoEmotions release)")
    return path


def fingerprint() -> dict[str, str]:
    """sha256 of every file, checked (what a scorer trained on GoEmotions records)."""
    for name in FILES_SHA256:
        fetch(name)
    return dict(FILES_SHA256)


def _label_map() -> tuple[list[str], dict[str, str]]:
    emotions = fetch("emotions.txt").read_text(encoding="utf-8").split()
    ekman = json.loads(fetch("ekman_mapping.json").read_text(encoding="utf-8"))
    to_group = {emotion: EKMAN_TO_SEV[group] for group, members in ekman.items() for emotion in members}
    to_group["neutral"] = EKMAN_TO_SEV["neutral"]
    return emotions, to_group


def load(split: str) -> list[Comment]:
    """Every comment of one split (`train`, `dev`, `test`), in file order."""
    if split not in SPLITS:
        raise UserError(f"GoEmotions has no split {split!r}; choose one of {', '.join(SPLITS)}")
    emotions, to_group = _label_map()
    comments = []
    path = fetch(f"{split}.tsv")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise UserError(f"{path}:{number}: expected 3 tab-separated fields, got {len(fields)}")
            text, label_ids, comment_id = fields
            names = tuple(emotions[int(i)] for i in label_ids.split(","))
            groups = tuple(sorted({to_group[name] for name in names}))
            comments.append(Comment(comment_id, text, names, groups))
    return comments
