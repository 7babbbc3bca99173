"""Where a run's replies came from, as `results.json` records it under `spec`: the sev-bench source (git
state), the software versions, the hardware, the model, the chat template, the method's artifact and the
command line. Nothing here changes a reply; it only describes the run.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import __version__
from .paths import shown_path
from .prompts import CHAT_TEMPLATE_KWARGS

# Packages whose versions can change a reply or a score.
VERSIONED_PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "scikit-learn", "sentence-transformers")


def git_state() -> dict:
    """The commit of the sev-bench source that ran, and whether tracked files differed from it (None and
    None outside a git checkout, e.g. an installed wheel)."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def software_versions() -> dict:
    versions = {"python": platform.python_version(), "sev-bench": __version__}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def hardware(device) -> dict:
    """The device the model ran on, the platform and torch's CPU threads; the GPU's name, or the CPU's."""
    import torch  # heavy: only once a run has loaded its model anyway

    info = {"device": str(device), "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = cpu_model()
        info["cpu_cores"] = os.cpu_count()
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_info(loaded, dtype_requested: str) -> dict:
    """`spec.model`: which weights ran (id, revision, where from), their architecture, size and dtype."""
    model = loaded.model
    return {
        "id": loaded.model_id,
        "revision": loaded.revision,
        "source": loaded.source,
        "architecture": model.config.model_type,
        "num_parameters": model.num_parameters(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "dtype_requested": dtype_requested,
    }


def template_info(tokenizer) -> dict:
    """The chat template's sha256 and the fixed inputs it was rendered with."""
    template = tokenizer.chat_template or ""
    return {
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS),
    }


def artifact_info(artifact) -> dict | None:
    """The artifact's sha256 and where it lies; a path inside the cache is written relative to
    `$SEV_BENCH_CACHE`, so result files do not carry one machine's paths. An artifact with a
    `results_info()` adds what it says about itself (a circuit: the head space, the budget rule and the
    shares of heads and neurons it selects)."""
    if artifact is None:
        return None
    info = {"path": shown_path(artifact.path), "sha256": artifact.sha256}
    describe = getattr(artifact, "results_info", None)
    if callable(describe):
        info.update(describe())
    return info


def command_line() -> list[str] | None:
    """The `sev-bench` arguments of this process, or None when a program called `run` itself."""
    return sys.argv[1:] if Path(sys.argv[0]).name in ("sev-bench", "__main__.py") else None
