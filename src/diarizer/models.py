"""Finding the ONNX model files and opening onnxruntime sessions for them.

Search order for the model folder: the `model_dir` argument, env `DIARIZER_MODEL_DIR`, the Lambda
layer path `/opt/models`, then the repository's `models/` folder (an editable install).
Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

SEGMENTATION = "segmentation"
EMBEDDING_TRUNK = "speaker_embedding_trunk"  # CAM++ up to its frame-level features
EMBEDDING_HEAD = "speaker_embedding_head"  # CAM++'s dense layer after statistics pooling
ROLES = (SEGMENTATION, EMBEDDING_TRUNK, EMBEDDING_HEAD)

_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
_CANDIDATES = (Path("/opt/models"), _REPO_MODELS)


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    segmentation: Path
    embedding_trunk: Path
    embedding_head: Path


def find_model_dir(model_dir: str | os.PathLike | None = None) -> Path:
    explicit = model_dir or os.environ.get("DIARIZER_MODEL_DIR")
    candidates = [Path(explicit)] if explicit else list(_CANDIDATES)
    for folder in candidates:
        if (folder / "manifest.json").is_file():
            return folder
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no models/manifest.json found (searched {searched}); set DIARIZER_MODEL_DIR")


def locate_models(model_dir: str | os.PathLike | None = None) -> ModelFiles:
    """Read the manifest and return the fp32 segmentation and embedding (trunk, head) files it lists."""
    folder = find_model_dir(model_dir)
    entries = json.loads((folder / "manifest.json").read_text())
    entries = entries.get("models", entries) if isinstance(entries, dict) else entries
    chosen: dict[str, Path] = {}
    for entry in entries:
        if entry.get("variant", "fp32") != "fp32":
            continue
        chosen.setdefault(entry.get("role"), folder / entry["file"])
    missing = set(ROLES) - chosen.keys()
    if missing:
        raise FileNotFoundError(f"{folder}/manifest.json lists no {' or '.join(sorted(missing))} model")
    for path in chosen.values():
        if not path.is_file():
            raise FileNotFoundError(f"model file missing: {path}")
    return ModelFiles(folder, *(chosen[role] for role in ROLES))


def default_threads() -> int:
    """The engine's worker threads: one per core this process may use (oversubscription is 10x slower here);
    DIARIZER_THREADS overrides, up to that many (each worker holds its own ONNX sessions, about 43 MB)."""
    raw = os.environ.get("DIARIZER_THREADS", "").strip()
    if not raw:
        return available_cpus()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) > 0):
        raise ValueError(f"DIARIZER_THREADS must be a positive whole number, not {raw!r}")
    return min(int(raw), available_cpus())


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity and a container's CPU quota, both of which
    os.cpu_count() ignores (a container limited to 2 CPUs on a 64-core host made 64 workers: 2.7 GB)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else max(1, count)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup's quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def open_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are noise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
