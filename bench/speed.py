#!/usr/bin/env python3
"""Speed benchmark: real-time factor, peak memory, cold start, package size, threads, Lambda memory.

    python bench/speed.py                                   # 5 and 60 minutes, everything
    python bench/speed.py --minutes 5,60 --json .bench/speed.json
    python bench/speed.py --minutes 5 --runs 5 --skip cold,size,openblas,profile
    python bench/speed.py --minutes 20,60 --runs 3 --vs ../before --skip rtf,threads,openblas,cold,size,profile
    python bench/speed.py --minutes 20,60 --runs 3 --vs-param shared_trunk=false --skip rtf,threads,openblas,cold,size,profile

Every measurement runs in a FRESH interpreter (`bench/_speed_runner.py`), which times
`Diarizer().diarize(path)` (decoding included; model load timed separately) with `time.perf_counter`
and reports its own peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`); when `/usr/bin/time -v`
exists its "Maximum resident set size" is recorded too, as a cross-check.

Audio: if `<repo>/../shared/eval` exists, a 60-minute, 6-speaker synthetic conversation is generated
once with its make_conversations.py (seed 5) into `<repo>/.bench/long60/` (git-ignored); shorter
lengths are its first N minutes, longer ones are it repeated. Otherwise `demo/two-speakers.flac` is
tiled with small random gaps (seeded). The output says which source was used.

Machine load from other users makes numbers noisy: the 1-minute load average is printed with
every measurement. The headline numbers use this process's environment as it is (including any
OPENBLAS_* variables); the `openblas` section only compares against a variant of it.

Sections (all by default; `--skip` a comma list): rtf, threads, openblas, cold, size, profile.
The threads/openblas variants run interleaved (A B C A B C ...) on the ~5-minute file: default
threads vs `threads=1`, the OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE variant, and OPENBLAS_NUM_THREADS=1
(numpy's own BLAS thread pool next to the engine's workers). CPU seconds per audio second and
"cores busy" (CPU / wall) are printed too: under other users' load they are steadier than wall time.
The Lambda `MemorySize` recommendation is derived from the rtf + threads sections.

`--vs TREE` adds a side-by-side section: this checkout and another one (e.g. the commit before, from
`git worktree add ../before HEAD~1`), fresh processes in turn (this, other, this, other, ...) on every
length, the other's engine loaded with PYTHONPATH=TREE/src; it reports each one's median RTF, CPU and
peak RSS and the ratio this/other pair by pair, so a change is measured against its predecessor in one run.
`--vs-param NAME=VALUE` (repeatable) does the same with this checkout under those PipelineConfig overrides
as "this" and the defaults as "other".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "_speed_runner.py"
SHARED_EVAL = REPO.parent / "shared" / "eval"
DEMO = REPO / "demo" / "two-speakers.flac"
SR = 16000
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# Used only when this environment sets neither variable: the variant then sets these.
OPENBLAS_DEFAULT_VARIANT = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "524288"}
TIME_V = Path("/usr/bin/time")
SECTIONS = ("rtf", "threads", "openblas", "cold", "size", "profile", "vs")

# AWS Lambda: CPU share grows with memory, 1,769 MB = 1 vCPU, 10,240 MB max = 6 vCPUs; 900 s timeout.
MB_PER_VCPU = 1769
LAMBDA_MAX_MB = 10240
LAMBDA_TIMEOUT_S = 900
LAMBDA_CANDIDATES_MB = (1769, 2048, 3008, 3538, 5307, 7076, 10240)


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------------------------- audio


def shared_long60(cache: Path) -> Path:
    """The 60-minute, 6-speaker conversation (generated once; takes a minute or two and ~4 GB RAM)."""
    out = cache / "long60"
    existing = sorted(out.glob("conv000.*"))
    if existing and (out / "reference.rttm").is_file():
        return existing[0]
    log(f"generating the 60-minute conversation into {out} (once) ...")
    subprocess.run(
        [sys.executable, str(SHARED_EVAL / "make_conversations.py"), "--pool", str(SHARED_EVAL / "pool" / "libri"),
         "--out", str(out), "--count", "1", "--minutes", "60-60", "--speakers", "6-6", "--seed", "5"],
        check=True, cwd=REPO,
    )
    return sorted(out.glob("conv000.*"))[0]


def _write_flac(path: Path, samples) -> None:
    import soundfile as sf

    tmp = path.with_suffix(".tmp.flac")
    sf.write(str(tmp), samples, SR, subtype="PCM_16")
    tmp.replace(path)


def prepare_audio(minutes: float, cache: Path, source: str) -> Path:
    """A FLAC of exactly `minutes` minutes at 16 kHz, cached under `cache/speed/`."""
    import numpy as np
    import soundfile as sf

    speed_dir = cache / "speed"
    speed_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{minutes:g}min"
    if source == "shared":
        long60 = shared_long60(cache)
        info = sf.info(str(long60))
        if abs(info.duration - minutes * 60) < 60 and info.samplerate == SR:
            return long60  # the generated file itself (60.1 min)
        path = speed_dir / f"conv_{tag}.flac"
        if path.is_file():
            return path
        base, sr = sf.read(str(long60), dtype="float32")
        assert sr == SR, sr
        need = int(minutes * 60 * SR)
        reps = -(-need // len(base))
        _write_flac(path, np.tile(base, reps)[:need])
        return path
    path = speed_dir / f"demo_tiled_{tag}.flac"
    if path.is_file():
        return path
    base, sr = sf.read(str(DEMO), dtype="float32")
    if base.ndim > 1:
        base = base.mean(axis=1)
    assert sr == SR, sr
    rng = np.random.default_rng(5)
    need = int(minutes * 60 * SR)
    parts, total = [], 0
    while total < need:
        gap = np.zeros(int(rng.uniform(0.2, 1.5) * SR), np.float32)
        parts += [base, gap]
        total += len(base) + len(gap)
    _write_flac(path, np.concatenate(parts)[:need])
    return path


def prepare_clip(cache: Path) -> Path:
    import soundfile as sf

    path = cache / "speed" / "clip5s.flac"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        samples, sr = sf.read(str(DEMO), dtype="float32", frames=5 * SR)
        assert sr == SR, sr
        _write_flac(path, samples)
    return path


# --------------------------------------------------------------------------------------- processes


def run_fresh(args: list[str], env: dict | None = None, timeout: float = 7200) -> dict:
    """Run the runner in a fresh interpreter; return its JSON (+ wall time, /usr/bin/time -v max RSS)."""
    cmd = [sys.executable, str(RUNNER), *args]
    use_time = TIME_V.is_file() and os.access(TIME_V, os.X_OK)
    if use_time:
        cmd = [str(TIME_V), "-v", *cmd]
    before = load1()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("@@RESULT "))
    out = json.loads(line[len("@@RESULT "):])
    out["process_wall_s"] = wall
    out["load1_before"] = before
    out["load1_after"] = load1()
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if m:
            out["time_v_max_rss_mb"] = int(m.group(1)) / 1024.0
    return out


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def rtf_run(path: Path, threads: int | None = None, env: dict | None = None, label: str = "", tag: str = "",
            params: list[str] = ()) -> dict:
    args = ["rtf", str(path)] + (["--threads", str(threads)] if threads else []) + [f"--param={p}" for p in params]
    r = run_fresh(args, env=env)
    log(f"{label} {tag}: RTF {r['rtf']:.4f} ({r['diarize_s']:.1f} s for {r['audio_s'] / 60:.1f} min), "
        f"{r['cores_busy']:.2f} cores busy, load {r['load_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
        f"load avg {r['load1_before']}->{r['load1_after']}")
    return r


def summarize(path: Path, rows: list[dict], label: str) -> dict:
    rtf = med(rows, "rtf")
    return {
        "label": label,
        "file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
        "threads": rows[0]["threads"],
        "runs": len(rows),
        "audio_min": rows[0]["audio_s"] / 60,
        "rtf_median": rtf,
        "rtf_all": [r["rtf"] for r in rows],
        "cpu_per_audio_s_median": med(rows, "cpu_per_audio_s"),
        "cores_busy_median": med(rows, "cores_busy"),
        "diarize_s_median": med(rows, "diarize_s"),
        "load_s_median": med(rows, "load_s"),
        "import_s_median": med(rows, "import_s"),
        "peak_rss_mb_median": med(rows, "peak_rss_mb"),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows),
        "peak_rss_after_load_mb_median": med(rows, "peak_rss_after_load_mb"),
        "time_v_max_rss_mb_max": max((r.get("time_v_max_rss_mb") or 0 for r in rows), default=None) or None,
        "audio_h_per_compute_h": 1 / rtf if rtf else None,
        "speakers": rows[0]["speakers"],
        "load1": [r["load1_before"] for r in rows] + [rows[-1]["load1_after"]],
        "raw": rows,
    }


def rtf_series(path: Path, runs: int, threads: int | None = None, env: dict | None = None, label: str = "") -> dict:
    return summarize(path, [rtf_run(path, threads, env, label, f"run {i + 1}/{runs}") for i in range(runs)], label)


def interleaved(path: Path, runs: int, variants: list[tuple[str, int | None, dict | None]]) -> list[dict]:
    """Round-robin over the variants (A B C A B C ...), so a change in other users' load hits all alike."""
    rows: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    for i in range(runs):
        for label, threads, env in variants:
            rows[label].append(rtf_run(path, threads, env, label, f"round {i + 1}/{runs}"))
    return [summarize(path, rows[label], label) for label, _, _ in variants]


def side_by_side(path: Path, runs: int, other: Path | None, params: list[str]) -> dict:
    """This checkout (under `params`) against `other` (a checkout of another commit; None: this checkout's
    defaults), pairs of fresh processes in turn."""
    env = dict(os.environ, PYTHONPATH=str(other.resolve() / "src")) if other else None
    this_label = "this checkout" + (f" ({', '.join(params)})" if params else "")
    other_label = str(other) if other else "this checkout (defaults)"
    this_rows, other_rows = [], []
    for i in range(runs):
        this_rows.append(rtf_run(path, label=this_label, tag=f"pair {i + 1}/{runs}", params=params))
        other_rows.append(rtf_run(path, env=env, label=other_label, tag=f"pair {i + 1}/{runs}"))
    ratios = {key: [a[key] / b[key] for a, b in zip(this_rows, other_rows)] for key in ("rtf", "cpu_s", "peak_rss_mb")}
    return {"this": summarize(path, this_rows, this_label), "other": summarize(path, other_rows, other_label),
            "ratios": ratios, "ratio_medians": {k: statistics.median(v) for k, v in ratios.items()}}


def cold_series(clip: Path, runs: int) -> dict:
    data_dir = tempfile.mkdtemp(prefix="speed-cold-")
    env = dict(os.environ, DIARIZER_BACKEND="local", DIARIZER_DATA_DIR=data_dir)
    try:
        worker, api = [], []
        for i in range(runs):
            worker.append(run_fresh(["worker", str(clip)], env=env))
            api.append(run_fresh(["api"], env=env))
            w = worker[-1]
            log(f"cold {i + 1}/{runs}: worker import {w['import_s']:.2f} + load {w['load_s']:.2f} + first 5 s "
                f"{w['first_diarize_s']:.2f} s; api import {api[-1]['import_s']:.2f} s; load avg {w['load1_before']}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    for rows in (worker,):
        for r in rows:
            r["import_plus_load_s"] = r["import_s"] + r["load_s"]
    return {
        "runs": runs,
        "worker": {
            "import_s": med(worker, "import_s"),
            "engine_import_s": med(worker, "engine_import_s"),
            "sessions_s": med(worker, "sessions_s"),
            "load_s": med(worker, "load_s"),
            "import_plus_load_s": med(worker, "import_plus_load_s"),
            "first_diarize_5s_clip_s": med(worker, "first_diarize_s"),
            "process_wall_s": med(worker, "process_wall_s"),
            "peak_rss_mb": med(worker, "peak_rss_mb"),
            "heavy_after_import": worker[0]["heavy_after_import"],
            "heavy_after_load": worker[0]["heavy_after_load"],
        },
        "api": {
            "import_s": med(api, "import_s"),
            "process_wall_s": med(api, "process_wall_s"),
            "peak_rss_mb": med(api, "peak_rss_mb"),
            "heavy_after_import": api[0]["heavy_after_import"],
            "imports_onnxruntime_or_scipy": any(
                m in r["heavy_after_import"] for r in api for m in ("onnxruntime", "scipy")),
        },
        "load1": [r["load1_before"] for r in worker],
        "raw": {"worker": worker, "api": api},
    }


# -------------------------------------------------------------------------------------------- size


def package_sizes() -> dict:
    """`python layers/build.py --check-size` (falls back to check_size.py --no-build if the build fails)."""
    cmd = [sys.executable, str(REPO / "layers" / "build.py"), "--check-size"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if "total unzipped" not in proc.stdout:
        log(f"layers/build.py --check-size failed ({proc.returncode}); reading the existing build tree")
        cmd = [sys.executable, str(REPO / "layers" / "check_size.py"), "--no-build"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    functions: dict[str, dict] = {}
    current = None
    for line in proc.stdout.splitlines():
        if re.match(r"^\S.*:$", line):
            current = line[:-1]
            functions[current] = {"parts": {}}
        elif current and (m := re.match(r"^\s+total unzipped\s+([\d.]+) MB.*?\)\s*(.*)$", line)):
            functions[current]["total_mb"] = float(m.group(1))
            functions[current]["verdict"] = m.group(2)
        elif current and (m := re.match(r"^\s+(\S+)\s+([\d.]+) MB", line)):
            functions[current]["parts"][m.group(1)] = float(m.group(2))
    return {"command": " ".join(["python", *[str(Path(c).relative_to(REPO)) if str(c).startswith(str(REPO)) else c
                                             for c in cmd[1:]]]),
            "exit_code": proc.returncode, "functions": functions, "output": proc.stdout}


# ---------------------------------------------------------------------------------------- analysis


def memory_model(series: list[dict]) -> dict:
    """Peak RSS = base + per_hour * audio hours (least squares over the lengths measured)."""
    pts = [(s["audio_min"] / 60, s["peak_rss_mb_max"]) for s in series]
    base_load = statistics.median(s["peak_rss_after_load_mb_median"] for s in series)
    if len({round(h, 3) for h, _ in pts}) >= 2:
        mh = statistics.fmean(h for h, _ in pts)
        mr = statistics.fmean(r for _, r in pts)
        slope = sum((h - mh) * (r - mr) for h, r in pts) / sum((h - mh) ** 2 for h, _ in pts)
        base = mr - slope * mh
        how = "least-squares line through peak RSS of the lengths measured"
    else:
        h, r = pts[0]
        slope = max(r - base_load, 0) / h
        base = base_load
        how = "(peak RSS - RSS after model load) / audio hours of the one length measured"
    if max(h for h, _ in pts) < 0.5:
        how += "; WARNING: no length >= 30 min measured, the fixed ONNX/arena overhead dominates: unreliable"
    return {"base_mb": base, "per_audio_hour_mb": slope, "rss_after_load_mb": base_load, "how": how}


def speedup_at(vcpus: float, s2: float) -> float:
    """Throughput relative to 1 thread on 1 full core: linear share below 1 vCPU, the measured
    2-thread speed-up interpolated between 1 and 2 vCPUs, and the same per-vCPU gain beyond (an
    extrapolation: not measured here)."""
    if vcpus <= 1:
        return vcpus
    return 1 + (vcpus - 1) * (max(s2, 1.0) - 1)  # a measured slow-down (load noise) counts as no gain


def lambda_recommendation(rtf1: float, rtf2: float, mem: dict, cold_s: float | None) -> dict:
    s2 = rtf1 / rtf2
    rows = []
    for mb in LAMBDA_CANDIDATES_MB:
        vcpus = min(mb / MB_PER_VCPU, 6.0)
        sp = speedup_at(vcpus, s2)
        rtf = rtf1 / sp
        t_per_h = 3600 * rtf
        gbs = mb / 1024 * t_per_h
        budget = LAMBDA_TIMEOUT_S - (cold_s or 0)
        max_by_time_h = budget / rtf / 3600
        max_by_mem_h = max((mb * 0.9 - mem["base_mb"]) / mem["per_audio_hour_mb"], 0) if mem["per_audio_hour_mb"] > 0 else float("inf")
        rows.append({"memory_mb": mb, "vcpus": round(vcpus, 2), "rtf_est": rtf, "s_per_audio_hour": t_per_h,
                     "gb_s_per_audio_hour": gbs, "max_audio_h_timeout": max_by_time_h,
                     "max_audio_h_memory": max_by_mem_h, "max_audio_h": min(max_by_time_h, max_by_mem_h),
                     "extrapolated": vcpus > 2.0})
    cheapest = min(r["gb_s_per_audio_hour"] for r in rows)
    for r in rows:
        r["cost_rel"] = r["gb_s_per_audio_hour"] / rows[0]["gb_s_per_audio_hour"]
    # Measured range only (<= 2 vCPUs: the engine was measured with 1 and 2 threads); within 25 %
    # of the cheapest cost, take the fastest.
    pool = [r for r in rows if not r["extrapolated"] and r["gb_s_per_audio_hour"] <= 1.25 * cheapest]
    best = min(pool, key=lambda r: r["s_per_audio_hour"])
    return {"speedup_2_threads": s2, "rows": rows, "recommended_mb": best["memory_mb"], "recommended": best}


# ----------------------------------------------------------------------------------------- output


def fmt(x, spec=".2f", unit=""):
    return "—" if x is None else f"{x:{spec}}{unit}"


def render(res: dict) -> str:
    out = []
    env = res["environment"]
    out.append("## Speed benchmark\n")
    out.append(f"- command: `{res['command']}`")
    out.append(f"- started {res['started_utc']} UTC, {res['elapsed_s'] / 60:.1f} min; host {env['cpu']} "
               f"({env['cpu_count']} CPUs), Python {env['python']}")
    out.append(f"- load average (1/5/15 min) at start {env['loadavg_start']}, at end {env['loadavg_end']} "
               f"(2 cores shared: anything above ~2 means the numbers are slowed by other work)")
    out.append(f"- OPENBLAS env: {env['openblas'] or 'not set'}; audio source: {res['audio_source']}")
    out.append("")
    if res.get("rtf"):
        out.append("### Real-time factor (whole pipeline incl. decoding, fresh process per run, default threads)\n")
        out.append("| audio | file | runs | threads | median RTF | RTF all runs | CPU s / audio s | cores busy | "
                   "diarize s | model load s | peak RSS MB | audio h / compute h | speakers | load avg (runs) |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for s in res["rtf"]:
            out.append(f"| {s['audio_min']:.1f} min | `{s['file']}` | {s['runs']} | {s['threads']} | "
                       f"{s['rtf_median']:.4f} | {', '.join(f'{x:.4f}' for x in s['rtf_all'])} | "
                       f"{s['cpu_per_audio_s_median']:.4f} | {s['cores_busy_median']:.2f} | "
                       f"{s['diarize_s_median']:.1f} | {s['load_s_median']:.2f} | {s['peak_rss_mb_max']:.0f}"
                       f"{'' if s['time_v_max_rss_mb_max'] is None else ' (time -v ' + format(s['time_v_max_rss_mb_max'], '.0f') + ')'} | "
                       f"{s['audio_h_per_compute_h']:.1f} | {s['speakers']} | {', '.join(str(x) for x in s['load1'])} |")
        out.append("")
        mem = res["memory"]
        p60 = res.get("peak_60min_mb")
        verdict = "" if p60 is None else (" — target ≤ 1,536 MB: " + ("MET" if p60 <= 1536 else "NOT MET"))
        out.append(f"- peak RSS for the ~60-minute file: {fmt(p60, '.0f', ' MB')}{verdict}")
        out.append(f"- memory model: {mem['base_mb']:.0f} MB + {mem['per_audio_hour_mb']:.0f} MB per audio hour "
                   f"({mem['how']}); RSS after model load {mem['rss_after_load_mb']:.0f} MB")
        out.append("")
    if res.get("vs"):
        what = f" with {', '.join(res['vs']['params'])}" if res["vs"]["params"] else ""
        out.append(f"### This checkout{what}, side by side with {res['vs']['other']} (fresh processes in turn, "
                   f"default threads)\n")
        out.append("| audio | checkout | runs | median RTF | RTF all runs | CPU s (median) | peak RSS MB | speakers | "
                   "load avg (runs) |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for pair in res["vs"]["lengths"]:
            for s in (pair["this"], pair["other"]):
                out.append(f"| {s['audio_min']:.1f} min | {s['label']} | {s['runs']} | {s['rtf_median']:.4f} | "
                           f"{', '.join(f'{x:.4f}' for x in s['rtf_all'])} | "
                           f"{statistics.median(r['cpu_s'] for r in s['raw']):.1f} | {s['peak_rss_mb_max']:.0f} | "
                           f"{s['speakers']} | {', '.join(str(x) for x in s['load1'])} |")
        out.append("")
        out.append("| audio | ratio this / other: RTF per pair (median) | CPU s per pair (median) | peak RSS (median) |")
        out.append("| --- | --- | --- | --- |")
        for pair in res["vs"]["lengths"]:
            r, m = pair["ratios"], pair["ratio_medians"]
            out.append(f"| {pair['this']['audio_min']:.1f} min | {', '.join(f'{x:.3f}' for x in r['rtf'])} "
                       f"(**{m['rtf']:.3f}**) | {', '.join(f'{x:.3f}' for x in r['cpu_s'])} ({m['cpu_s']:.3f}) | "
                       f"{m['peak_rss_mb']:.3f} |")
        out.append("")
    if res.get("threads"):
        t = res["threads"]
        out.append(f"### Threads and OpenBLAS environment ({t['series'][0]['audio_min']:.1f}-minute file, variants "
                   f"interleaved, fresh process per run)\n")
        out.append("| variant | runs | threads | median RTF | RTF all runs | CPU s / audio s | cores busy | "
                   "peak RSS MB | load avg (runs) |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for s in t["series"]:
            out.append(f"| {s['label']} | {s['runs']} | {s['threads']} | {s['rtf_median']:.4f} | "
                       f"{', '.join(f'{x:.4f}' for x in s['rtf_all'])} | {s['cpu_per_audio_s_median']:.4f} | "
                       f"{s['cores_busy_median']:.2f} | {s['peak_rss_mb_max']:.0f} | "
                       f"{', '.join(str(x) for x in s['load1'])} |")
        if t.get("speedup"):
            out.append(f"\n- speed-up default ({t['default_threads']} threads) vs 1 thread: {t['speedup']:.2f}x "
                       f"(parallel efficiency {t['speedup'] / t['default_threads']:.0%})")
        out.append("")
    if res.get("cold"):
        c = res["cold"]
        w, a = c["worker"], c["api"]
        ok = w["import_plus_load_s"] <= 2.0
        out.append(f"### Cold start (median of {c['runs']} fresh processes; DIARIZER_BACKEND=local)\n")
        out.append("| stage | median s |")
        out.append("| --- | --- |")
        out.append(f"| worker: import functions/worker/app.py | {w['import_s']:.2f} |")
        out.append(f"| worker: model load (import diarizer.pipeline {w['engine_import_s']:.2f} + "
                   f"ONNX sessions {w['sessions_s']:.2f}) | {w['load_s']:.2f} |")
        out.append(f"| **worker: import + model load** (target ≤ 2 s: {'MET' if ok else 'NOT MET'}) | "
                   f"**{w['import_plus_load_s']:.2f}** |")
        out.append(f"| worker: first diarization of a 5 s clip | {w['first_diarize_5s_clip_s']:.2f} |")
        out.append(f"| worker: whole process (interpreter start to exit) | {w['process_wall_s']:.2f} |")
        out.append(f"| api: import functions/api/app.py | {a['import_s']:.2f} |")
        out.append(f"| api: whole process | {a['process_wall_s']:.2f} |")
        out.append("")
        out.append(f"- heavy modules after the worker handler import: {', '.join(w['heavy_after_import']) or 'none'}; "
                   f"after model load: {', '.join(w['heavy_after_load'])}")
        out.append(f"- heavy modules after the API handler import: {', '.join(a['heavy_after_import']) or 'none'} — "
                   f"onnxruntime/scipy imported: {'YES (problem)' if a['imports_onnxruntime_or_scipy'] else 'no'}")
        out.append(f"- peak RSS: worker after first diarization {w['peak_rss_mb']:.0f} MB, API after import "
                   f"{a['peak_rss_mb']:.0f} MB; load avg during the runs {', '.join(str(x) for x in c['load1'])}")
        out.append("")
    if res.get("size"):
        sz = res["size"]
        out.append(f"### Package size (`{sz['command']}`, exit {sz['exit_code']})\n")
        out.append("| function | parts (unzipped MB) | total unzipped MB | verdict |")
        out.append("| --- | --- | --- | --- |")
        for name, f in sz["functions"].items():
            parts = ", ".join(f"{k} {v:.1f}" for k, v in f["parts"].items())
            out.append(f"| {name} | {parts} | {fmt(f.get('total_mb'), '.1f')} | {f.get('verdict', '')} |")
        out.append("")
    if res.get("lambda"):
        lam = res["lambda"]
        mem = res["memory"]
        out.append("### Lambda `MemorySize` (worker)\n")
        out.append(f"Model: vCPUs = MemorySize / {MB_PER_VCPU} (max 6); throughput between 1 and 2 vCPUs "
                   f"interpolated from the 1- vs 2-thread speed-up measured on the short file, above 2 vCPUs "
                   f"extrapolated (*, not measured: this machine has 2 cores). Cost = GB-s per audio hour. "
                   f"Max audio per invocation = the smaller of the {LAMBDA_TIMEOUT_S} s timeout (minus a "
                   f"{fmt(lam['cold_s'], '.1f')} s cold start) and 90 % of MemorySize by the memory model "
                   f"({mem['base_mb']:.0f} MB + {mem['per_audio_hour_mb']:.0f} MB per audio hour). Times are this "
                   f"machine's (AMD EPYC); Lambda's cores differ, so confirm with one timed invocation.\n")
        bases = [("wall", "wall-clock time as measured", lam),
                 ("cpu", "CPU time (other users' load removed; 2 threads assumed to keep both cores busy, an "
                         "optimistic bound)", lam["cpu_time_based"])]
        for key, what, data in bases:
            head = " (headline)" if lam["basis"] == key else ""
            out.append(f"From {what}{head}: 1 thread {data['rtf_1_thread']:.4f}, 2 threads "
                       f"{data['rtf_2_threads']:.4f} s per audio s, speed-up {data['speedup_2_threads']:.2f}x\n")
            out.append("| MemorySize MB | vCPUs | est. RTF | s per audio hour | GB-s per audio hour | "
                       "cost vs 1,769 MB | max audio (timeout) | max audio (memory) |")
            out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in data["rows"]:
                star = " *" if r["extrapolated"] else ""
                out.append(f"| {r['memory_mb']:,}{star} | {r['vcpus']:.2f} | {r['rtf_est']:.4f} | "
                           f"{r['s_per_audio_hour']:.0f} | {r['gb_s_per_audio_hour']:.0f} | {r['cost_rel']:.2f}x | "
                           f"{r['max_audio_h_timeout']:.1f} h | {r['max_audio_h_memory']:.1f} h |")
            out.append("")
        p60 = res.get("peak_60min_mb")
        mem_note = "" if p60 is None else (
            f" The 60-minute peak RSS ({p60:,.0f} MB) fits even 1,769 MB, so memory is bought for vCPUs, not RSS."
            if p60 < 0.9 * MB_PER_VCPU else f" The 60-minute peak RSS is {p60:,.0f} MB: check it fits.")
        chosen = lam if lam["basis"] == "wall" else lam["cpu_time_based"]
        other = lam["cpu_time_based"] if lam["basis"] == "wall" else lam
        b = chosen["recommended"]
        why = (f"the median 1-minute load average during the thread runs was {lam['basis_load1_median']:.1f} on "
               f"{os.cpu_count()} cores, so " + ("the wall-clock 2-thread speed-up mostly measures other users' "
                                                 "work and CPU time is the basis" if lam["basis"] == "cpu"
                                                 else "wall-clock time is the basis"))
        out.append(f"**Recommendation: MemorySize {b['memory_mb']:,} MB (~{b['vcpus']:.1f} vCPUs)** — "
                   f"{b['s_per_audio_hour']:.0f} s per audio hour (RTF {b['rtf_est']:.4f}), "
                   f"{b['cost_rel']:.2f}x the GB-s of 1,769 MB, up to {b['max_audio_h']:.1f} h of audio per "
                   f"invocation. Rule: the fastest setting within the measured range (≤ 2 vCPUs; the engine runs "
                   f"one worker per core) whose cost is within 25 % of the cheapest. Basis: {why} (the other "
                   f"basis gives {other['recommended']['memory_mb']:,} MB)." + mem_note)
        out.append("")
    if res.get("profile"):
        p = res["profile"]
        out.append(f"### Profile (cProfile, 1 thread, {p['audio_s'] / 60:.1f}-minute file; wall {p['wall_s']:.1f} s "
                   f"under the profiler)\n")
        out.append("| stage | function | calls | cumulative s | % of diarize |")
        out.append("| --- | --- | --- | --- | --- |")
        for r in p.get("stages", []):
            out.append(f"| {r['stage'].replace('  ', '&nbsp;&nbsp;')} | `{r['function']}` | {r['calls']} | "
                       f"{r['cumtime_s']:.2f} | {r['cumtime_s'] / p['profiled_total_s']:.1%} |")
        out.append("\nTop by own time:\n")
        out.append("| function | calls | own time s | own % | cumulative s | cum % |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        total = p["profiled_total_s"]
        for r in p["by_tottime"][:15]:
            out.append(f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.2f} | {r['tottime_s'] / total:.1%} | "
                       f"{r['cumtime_s']:.2f} | {r['cumtime_s'] / total:.1%} |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="5,60", help="audio lengths in minutes, comma separated (default 5,60)")
    ap.add_argument("--runs", type=int, help="runs per length (default: 1 for >= 30 min, 3 for shorter)")
    ap.add_argument("--cold-runs", type=int, default=5, help="fresh processes for the cold start (default 5)")
    ap.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SECTIONS)}")
    ap.add_argument("--cache", type=Path, default=REPO / ".bench", help="audio cache (default <repo>/.bench)")
    ap.add_argument("--source", choices=["auto", "shared", "demo"], default="auto",
                    help="audio source: ../shared/eval conversation or tiled demo (default: shared if present)")
    ap.add_argument("--openblas", default="auto",
                    help="variant env for the openblas section: 'auto' (unset the OPENBLAS_* vars if set, else set "
                         f"{OPENBLAS_DEFAULT_VARIANT}) or NAME=VALUE,... ('NAME=' unsets)")
    ap.add_argument("--json", type=Path, help="also write every number (and raw runs) as JSON here")
    ap.add_argument("--vs", type=Path, help="another checkout (e.g. the commit before) to run side by side")
    ap.add_argument("--vs-param", action="append", default=[],
                    help="side by side: this checkout with this PipelineConfig override against its defaults")
    args = ap.parse_args(argv)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}")
    minutes = sorted({float(m) for m in args.minutes.split(",") if m.strip()})
    source = args.source
    if source == "auto":
        source = "shared" if (SHARED_EVAL / "make_conversations.py").is_file() else "demo"
    source_text = (
        "../shared/eval synthetic conversation (make_conversations.py --minutes 60-60 --speakers 6-6 --seed 5; "
        "shorter lengths = its first N minutes, longer = repeated)" if source == "shared"
        else "demo/two-speakers.flac tiled with random 0.2-1.5 s gaps (seed 5)")
    cache = args.cache.resolve()
    started = time.time()
    res: dict = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO))
                                         if Path(sys.argv[0]).resolve().is_relative_to(REPO) else sys.argv[0],
                                         *sys.argv[1:]]),
        "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "audio_source": source_text,
        "environment": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "openblas": {k: os.environ[k] for k in OPENBLAS_VARS if k in os.environ},
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            res["environment"]["cpu"] = names[0]
    except OSError:
        pass

    log(f"audio source: {source}")
    if args.vs is None and not args.vs_param:
        skip.add("vs")
    files = {m: prepare_audio(m, cache, source) for m in minutes} if {"rtf", "threads", "openblas",
                                                                       "profile", "vs"} - skip else {}
    short = min(minutes, key=lambda m: abs(m - 5)) if minutes else None

    by_minutes: dict[float, dict] = {}
    if "rtf" not in skip:
        res["rtf"] = []
        for m in minutes:
            runs = args.runs or (1 if m >= 30 else 3)
            s = rtf_series(files[m], runs, label=f"{m:g} min default")
            by_minutes[m] = s
            res["rtf"].append(s)
        res["memory"] = memory_model(res["rtf"])
        near60 = [s for s in res["rtf"] if abs(s["audio_min"] - 60) <= 2]
        res["peak_60min_mb"] = near60[0]["peak_rss_mb_max"] if near60 else None

    short_runs = args.runs or 3
    if short is not None and ({"threads", "openblas"} - skip):
        variants: list[tuple[str, int | None, dict | None]] = [("default threads, this environment", None, None)]
        if "threads" not in skip:
            variants.append(("threads=1", 1, None))
        if "openblas" not in skip:
            env = dict(os.environ)
            if args.openblas == "auto":
                if any(k in os.environ for k in OPENBLAS_VARS):
                    change = {k: None for k in OPENBLAS_VARS}
                else:
                    change = dict(OPENBLAS_DEFAULT_VARIANT)
            else:
                change = {}
                for item in args.openblas.split(","):
                    k, _, v = item.partition("=")
                    change[k.strip()] = v.strip() or None
            for k, v in change.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
            desc = ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in change.items())
            variants.append((f"default threads, {desc}", None, env))
            # numpy's OpenBLAS keeps its own thread pool (busy-waiting after each call) next to the
            # engine's worker threads; pinning it to 1 thread shows what that costs.
            one_blas = dict(os.environ, OPENBLAS_NUM_THREADS="1")
            variants.append(("default threads, OPENBLAS_NUM_THREADS=1", None, one_blas))
            if "threads" not in skip:
                variants.append(("threads=1, OPENBLAS_NUM_THREADS=1", 1, one_blas))
        log(f"threads/OpenBLAS on the {short:g}-minute file, interleaved: {[v[0] for v in variants]}")
        series = interleaved(files[short], short_runs, variants)
        default = series[0]
        one = next((x for x in series if x["label"] == "threads=1"), None)
        res["threads"] = {"file": str(files[short]), "default_threads": default["threads"], "series": series,
                          "interleaved": True,
                          "speedup": (one["rtf_median"] / default["rtf_median"]) if one else None}

    if "vs" not in skip:
        other = str(args.vs) if args.vs else "this checkout's defaults"
        res["vs"] = {"other": other, "params": args.vs_param, "lengths": []}
        for m in minutes:
            log(f"side by side with {other} on the {m:g}-minute file")
            res["vs"]["lengths"].append(side_by_side(files[m], args.runs or 3, args.vs, args.vs_param))

    if "cold" not in skip:
        res["cold"] = cold_series(prepare_clip(cache), args.cold_runs)

    if "size" not in skip:
        log("package size: python layers/build.py --check-size")
        res["size"] = package_sizes()

    if res.get("threads") and res["threads"].get("speedup") and res.get("memory"):
        one = next(x for x in res["threads"]["series"] if x["label"] == "threads=1")
        two = res["threads"]["series"][0]
        if two["threads"] == 2:
            cold_s = None
            if res.get("cold"):
                w = res["cold"]["worker"]
                cold_s = w["process_wall_s"]
            rec = lambda_recommendation(one["rtf_median"], two["rtf_median"], res["memory"], cold_s)
            res["lambda"] = dict(rec, rtf_1_thread=one["rtf_median"], rtf_2_threads=two["rtf_median"], cold_s=cold_s)
            # The same from CPU time (less sensitive to other users' load): 1 thread = its CPU s per audio s,
            # 2 threads = half theirs (both cores busy all the time: an optimistic bound).
            c1 = one["cpu_per_audio_s_median"]
            c2 = max(two["cpu_per_audio_s_median"], c1) / 2  # never more than a 2x speed-up
            cpu_rec = lambda_recommendation(c1, c2, res["memory"], cold_s)
            res["lambda"]["cpu_time_based"] = {
                "rtf_1_thread": c1, "rtf_2_threads": c2, "speedup_2_threads": cpu_rec["speedup_2_threads"],
                "recommended_mb": cpu_rec["recommended_mb"], "recommended": cpu_rec["recommended"],
                "rows": cpu_rec["rows"]}
            # Headline basis: wall time, unless the machine was busier than its cores during these runs
            # (then the measured 2-thread speed-up mostly shows other users' work, and CPU time is used).
            load = statistics.median(one["load1"] + two["load1"])
            contended = load > (os.cpu_count() or 1)
            res["lambda"]["basis"] = "cpu" if contended else "wall"
            res["lambda"]["basis_load1_median"] = load
        else:
            log(f"default threads = {two['threads']}, not 2: no Lambda recommendation (it interpolates 1 -> 2)")

    if "profile" not in skip and short is not None:
        log(f"profile: cProfile, 1 thread, {short:g}-minute file")
        res["profile"] = run_fresh(["profile", str(files[short]), "--threads", "1", "--top", "30"])

    res["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["elapsed_s"] = time.time() - started
    print(render(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
