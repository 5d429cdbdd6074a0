"""One measurement in a fresh process, for bench/speed.py (prints one JSON line on stdout).

    python bench/_speed_runner.py rtf AUDIO [--threads N] [--param shared_trunk=false]   # import, model load, diarize(path) incl. decoding
    python bench/_speed_runner.py worker CLIP               # worker handler import, model load, first diarization
    python bench/_speed_runner.py api                       # API handler import only (+ heavy modules loaded)
    python bench/_speed_runner.py profile AUDIO [--threads 1] [--top 25]   # cProfile of one diarize(path)

Peak RSS is this process's own `resource.getrusage(RUSAGE_SELF).ru_maxrss` (KB on Linux), read after
each stage (it is a high-water mark, so each value includes the stages before).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "scipy", "onnxruntime", "soundfile", "diarizer.pipeline", "boto3", "botocore",
         "aws_xray_sdk", "aws_lambda_powertools")


# Pipeline stages to pull out of the profile: label -> (file name, function); cumulative times overlap
# where one stage calls another (fbank and the ONNX calls run inside the embedding stages).
STAGES = {
    "decode (audio.decode)": ("audio.py", "decode"),
    "segmentation + window embeddings (analyse)": ("pipeline.py", "analyse"),
    "  segmentation model (Segmenter.probabilities)": ("segmentation.py", "probabilities"),
    "  window embeddings (Embedder.embed_window)": ("embedding.py", "embed_window"),
    "  shared trunk runs (shared_trunk.run_interval)": ("shared_trunk.py", "run_interval"),
    "clustering + reconstruction + refinement (resolve)": ("pipeline.py", "resolve"),
    "  clustering (pipeline.cluster_windows)": ("pipeline.py", "cluster_windows"),
    "  turn re-assignment (refinement.reassign_turns)": ("refinement.py", "reassign_turns"),
    "all ONNX runs (InferenceSession.run)": ("onnxruntime_inference_collection.py", "run"),
    "  of which embedding model (Embedder.embed_frames)": ("embedding.py", "embed_frames"),
    "fbank features (features.fbank)": ("features.py", "fbank"),
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def heavy_loaded() -> list[str]:
    return [name for name in HEAVY if name in sys.modules]


def import_handler(which: str):
    """Import functions/<which>/app.py by path, as Lambda does (module name `app`)."""
    path = REPO / "functions" / which / "app.py"
    spec = importlib.util.spec_from_file_location(f"{which}_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_rtf(audio: str, threads: int | None, params: list[str]) -> dict:
    t0 = time.perf_counter()
    from diarizer import Diarizer  # noqa: F401  (lazy attribute: loads the pipeline modules)
    import diarizer.pipeline  # noqa: F401
    t1 = time.perf_counter()
    rss_import = peak_mb()
    config = None
    if params:  # PipelineConfig overrides, as the accuracy benches take them
        sys.path.insert(0, str(REPO / "bench"))
        from accuracy import with_overrides

        config = with_overrides(diarizer.pipeline.PipelineConfig(), params)
    engine = Diarizer(threads=threads, config=config)
    t2 = time.perf_counter()
    rss_load = peak_mb()
    c0 = cpu_s()
    result = engine.diarize(audio)
    t3 = time.perf_counter()
    cpu = cpu_s() - c0
    return {
        "threads": len(engine._workers),
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "diarize_s": t3 - t2,
        "audio_s": result.duration,
        "rtf": (t3 - t2) / result.duration,
        "cpu_s": cpu,
        "cpu_per_audio_s": cpu / result.duration,
        "cores_busy": cpu / (t3 - t2),
        "speakers": result.to_dict()["num_speakers"],
        "segments": len(result.segments),
        "peak_rss_after_import_mb": rss_import,
        "peak_rss_after_load_mb": rss_load,
        "peak_rss_mb": peak_mb(),
    }


def run_worker(clip: str) -> dict:
    t0 = time.perf_counter()
    import_handler("worker")
    t1 = time.perf_counter()
    heavy_after_import = heavy_loaded()
    import diarizer.pipeline  # what Worker imports lazily before its first Diarizer()
    from diarizer import Diarizer

    t_engine = time.perf_counter()
    engine = Diarizer()
    t2 = time.perf_counter()
    result = engine.diarize(clip)
    t3 = time.perf_counter()
    return {
        "import_s": t1 - t0,
        "engine_import_s": t_engine - t1,
        "sessions_s": t2 - t_engine,
        "load_s": t2 - t1,
        "first_diarize_s": t3 - t2,
        "clip_s": result.duration,
        "heavy_after_import": heavy_after_import,
        "heavy_after_load": heavy_loaded(),
        "peak_rss_mb": peak_mb(),
    }


def run_api() -> dict:
    t0 = time.perf_counter()
    import_handler("api")
    t1 = time.perf_counter()
    return {"import_s": t1 - t0, "heavy_after_import": heavy_loaded(), "peak_rss_mb": peak_mb()}


def run_profile(audio: str, threads: int, top: int) -> dict:
    import cProfile
    import pstats

    from diarizer import Diarizer

    engine = Diarizer(threads=threads)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    result = engine.diarize(audio)
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({"function": f"{Path(filename).name}:{line}({func})", "calls": nc, "tottime_s": tt,
                     "cumtime_s": ct})
    stages = []
    for label, (fname, func) in STAGES.items():
        hits = [v for (f, _line, fn), v in stats.stats.items() if Path(f).name == fname and fn == func]
        if hits:
            stages.append({"stage": label, "function": f"{fname}:{func}", "calls": sum(h[1] for h in hits),
                           "cumtime_s": sum(h[3] for h in hits)})
    by_tot = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
    by_cum = sorted(rows, key=lambda r: -r["cumtime_s"])[:top]
    return {"threads": threads, "wall_s": wall, "profiled_total_s": total, "audio_s": result.duration,
            "stages": stages, "by_tottime": by_tot, "by_cumtime": by_cum}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["rtf", "worker", "api", "profile"])
    ap.add_argument("audio", nargs="?")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--param", action="append", default=[], help="rtf: PipelineConfig override NAME=VALUE")
    args = ap.parse_args()
    if args.mode == "rtf":
        out = run_rtf(args.audio, args.threads, args.param)
    elif args.mode == "worker":
        out = run_worker(args.audio)
    elif args.mode == "api":
        out = run_api()
    else:
        out = run_profile(args.audio, args.threads or 1, args.top)
    out["loadavg"] = os.getloadavg()
    sys.stdout.flush()
    print("@@RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
