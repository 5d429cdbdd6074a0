"""The committed ONNX model files match models/manifest.json and run under onnxruntime.

No torch here: these are the files the runtime loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import onnxruntime as ort  # noqa: E402  (a hard dependency of the runtime: fail, do not skip)

MODELS = Path(__file__).resolve().parents[2] / "models"
MANIFEST = json.loads((MODELS / "manifest.json").read_text())
ENTRIES = {e["file"]: e for e in MANIFEST}


def _session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions():
    return {name: _session(MODELS / name) for name in ENTRIES}


def _by_role(role: str, variant: str = "fp32") -> dict:
    found = [e for e in MANIFEST if e["role"] == role and e.get("variant", "fp32") == variant]
    assert len(found) == 1, f"expected exactly one {variant} {role} model in the manifest"
    return found[0]


def test_manifest_lists_every_model():
    assert isinstance(MANIFEST, list)
    roles = {(e["role"], e.get("variant", "fp32")) for e in MANIFEST}
    for role in ("segmentation", "speaker_embedding_trunk", "speaker_embedding_head"):
        assert (role, "fp32") in roles
    for e in MANIFEST:
        for key in ("file", "sha256", "size_bytes", "source", "upstream", "license", "inputs", "outputs", "opset"):
            assert key in e, f"{e['file']}: manifest entry lacks {key}"
        for lic in e.get("license_files", []):
            assert (MODELS / lic).is_file(), lic


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_file_exists_and_sha256_matches(name):
    entry = ENTRIES[name]
    path = MODELS / name
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size == entry["size_bytes"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == entry["sha256"]
    # self-contained: no external weight file next to it
    assert not list(MODELS.glob(name + ".data")) and not list(MODELS.glob(Path(name).stem + ".onnx.data"))


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_declared_inputs_outputs_match(sessions, name):
    entry = ENTRIES[name]
    sess = sessions[name]
    got_in = [(i.name, len(i.shape)) for i in sess.get_inputs()]
    got_out = [(o.name, len(o.shape)) for o in sess.get_outputs()]
    assert got_in == [(i["name"], len(i["shape"])) for i in entry["inputs"]]
    assert got_out == [(o["name"], len(o["shape"])) for o in entry["outputs"]]
    # the declared shapes themselves (symbolic dims are strings)
    assert [list(i.shape) for i in sess.get_inputs()] == [i["shape"] for i in entry["inputs"]]
    assert [list(o.shape) for o in sess.get_outputs()] == [o["shape"] for o in entry["outputs"]]


def test_segmentation_on_noise_gives_log_probabilities(sessions):
    entry = _by_role("segmentation")
    seg = entry["segmentation"]
    sess = sessions[entry["file"]]
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((1, 1, 160000))).astype(np.float32)
    (out,) = sess.run(None, {entry["inputs"][0]["name"]: x})
    assert out.shape == (1, 589, 7)
    assert seg["num_frames_per_window"] == 589 and seg["num_classes"] == 7
    assert len(seg["powerset_classes"]) == 7
    assert np.isfinite(out).all()
    assert (out <= 1e-6).all()
    m = out.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(out - m).sum(-1, keepdims=True)))[..., 0]
    np.testing.assert_allclose(lse, 0.0, atol=1e-4)


def test_segmentation_dynamic_batch_and_length(sessions):
    entry = _by_role("segmentation")
    sess = sessions[entry["file"]]
    x = (0.1 * np.random.default_rng(1).standard_normal((2, 1, 80000))).astype(np.float32)
    (out,) = sess.run(None, {entry["inputs"][0]["name"]: x})
    assert out.shape == (2, 293, 7)


def _campplus(sessions, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(trunk frames, embeddings) of (batch, frames, 80) fbank through trunk, pooling and head."""
    from diarizer.embedding import stats_pool

    trunk, head = _by_role("speaker_embedding_trunk"), _by_role("speaker_embedding_head")
    (frames,) = sessions[trunk["file"]].run(None, {trunk["inputs"][0]["name"]: x})
    stats = np.stack([stats_pool(f.T) for f in frames])
    (emb,) = sessions[head["file"]].run(None, {head["inputs"][0]["name"]: stats})
    return frames, emb


def test_campplus_trunk_and_head_shapes(sessions):
    x = np.random.default_rng(2).standard_normal((2, 201, 80)).astype(np.float32)
    frames, emb = _campplus(sessions, x)
    assert frames.shape == (2, 512, 101)  # one frame per 20 ms: ceil(201 / 2)
    assert emb.shape == (2, 192)
    assert np.isfinite(frames).all() and np.isfinite(emb).all()
    # batching does not change an item's embedding (same length, no padding)
    _, one = _campplus(sessions, x[:1])
    cos = float(one[0] @ emb[0] / (np.linalg.norm(one[0]) * np.linalg.norm(emb[0])))
    assert cos > 0.9999


def test_campplus_parity_recorded_against_the_whole_torch_model():
    head = _by_role("speaker_embedding_head")
    assert "whole model" in head["parity"]["reference"]
    assert head["parity"]["max_abs_diff"] <= head["parity"]["tolerance"] <= 1e-3
    assert head["parity"]["min_cosine"] >= 0.9999
    assert _by_role("speaker_embedding_trunk")["parity"]["max_abs_diff"] <= 1e-3


def test_campplus_short_input_is_finite(sessions):
    x = np.random.default_rng(3).standard_normal((1, 1, 80)).astype(np.float32)
    frames, emb = _campplus(sessions, x)
    assert frames.shape == (1, 512, 1)
    assert emb.shape == (1, 192) and np.isfinite(emb).all()
