#!/usr/bin/env python3
"""Accuracy benchmark: DER (pyannote.metrics) and speaker counts on the evaluation sets.

    python bench/accuracy.py                      # both sets, default pipeline settings
    python bench/accuracy.py --set ami --set dev  # the same, explicitly
    python bench/accuracy.py --set DIR            # any folder with audio + reference.rttm [+ reference.uem]
    python bench/accuracy.py --param step_seconds=2.5 --param clustering.threshold=0.7

Sets: `ami` = ../shared/eval/ami (11 real meeting excerpts, scored inside its UEM);
`dev` = the standard development set of ../shared/eval/README.md (12 synthetic conversations,
generated once into .bench/dev with make_conversations.py --count 12 --seed 1 --prefix dev).

DER is reported at collar 0 and at a +-0.25 s collar around every reference boundary (NIST md-eval's
"collar 0.25"; pyannote.metrics' `collar=0.5` is that total width). Overlapping speech is scored.
`--cache DIR` keeps each file's segmentation + embeddings, so sweeping clustering or
reconstruction parameters (not step or embedding ones) reruns in seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "eval"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
COLLARS = {"0": 0.0, "0.25": 0.5}  # label -> pyannote.metrics collar (total width)


def dev_set(cache: Path) -> Path:
    folder = cache / "dev"
    if not (folder / "reference.rttm").is_file():
        subprocess.run(
            [sys.executable, str(SHARED_EVAL / "make_conversations.py"), "--pool", str(SHARED_EVAL / "pool" / "libri"),
             "--out", str(folder), "--count", "12", "--seed", "1", "--prefix", "dev"],
            check=True,
        )
    return folder


def resolve_set(name: str, cache: Path) -> Path:
    if name == "ami":
        return SHARED_EVAL / "ami"
    if name == "dev":
        return dev_set(cache)
    return Path(name)


def with_overrides(config, overrides: list[str]):
    """`a.b=value` strings -> a copy of the (nested, frozen) dataclass with those fields replaced."""
    for item in overrides:
        path, _, raw = item.partition("=")
        *parents, leaf = path.split(".")
        chain = [config]
        for name in parents:
            chain.append(getattr(chain[-1], name))
        parsed = json.loads(raw)  # null switches off a setting that may be None (silence_peak_db)
        value = parsed if parsed is None else type(getattr(chain[-1], leaf))(parsed)
        for obj, name in zip(reversed(chain), reversed(parents + [leaf])):
            value = dataclasses.replace(obj, **{name: value})
        config = value
    return config


def reference_turns(rttm: Path) -> dict[str, list[tuple[str, float, float]]]:
    """(speaker, start, end) per file of an RTTM file's SPEAKER lines."""
    turns: dict[str, list[tuple[str, float, float]]] = {}
    for line in rttm.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            turns.setdefault(parts[1], []).append((parts[7], float(parts[3]), float(parts[3]) + float(parts[4])))
    return turns


def scored_regions(uem: Path | None) -> dict[str, list[tuple[float, float]]]:
    """(start, end) spans per file of a UEM file; no file: everything is scored."""
    regions: dict[str, list[tuple[float, float]]] = {}
    if uem and uem.is_file():
        for line in uem.read_text().splitlines():
            if line.split():
                uri, _, start, end = line.split()
                regions.setdefault(uri, []).append((float(start), float(end)))
    return regions


def score(reference_rttm: Path, hypothesis: dict, uem_path: Path | None) -> dict:
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    refs: dict[str, Annotation] = {}
    for uri, turns in reference_turns(reference_rttm).items():
        refs[uri] = Annotation(uri=uri)
        for speaker, start, end in turns:
            refs[uri][Segment(start, end)] = speaker
    uems = {uri: Timeline([Segment(a, b) for a, b in spans], uri=uri) for uri, spans in scored_regions(uem_path).items()}
    report = {"files": {}, "collars": {}}
    for label, collar in COLLARS.items():
        metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
        for uri, result in hypothesis.items():
            hyp = Annotation(uri=uri)
            for i, seg in enumerate(result["segments"]):
                hyp[Segment(seg["start"], seg["end"]), i] = seg["speaker_id"]
            ref = refs.get(uri, Annotation(uri=uri))
            uem = uems.get(uri) or Timeline([Segment(0, result["duration"])], uri=uri)
            detail = metric(ref, hyp, uem=uem, detailed=True)
            entry = report["files"].setdefault(uri, {"true_speakers": len(ref.labels()), "found": result["num_speakers"]})
            entry[f"der_{label}"] = detail["diarization error rate"]
        total = abs(metric)
        comps = {k: sum(metric[k] for _ in [0]) for k in ("false alarm", "missed detection", "confusion", "total")}
        report["collars"][label] = {
            "der": total,
            "false_alarm": comps["false alarm"] / comps["total"],
            "missed": comps["missed detection"] / comps["total"],
            "confusion": comps["confusion"] / comps["total"],
        }
    return report


def reference_counts(reference_rttm: Path) -> dict[str, int]:
    return {uri: len({speaker for speaker, _, _ in turns}) for uri, turns in reference_turns(reference_rttm).items()}


def analysis_tag(config) -> str:
    """Short hash of the settings that change `analyse` (segmentation + voice prints): a cache key part."""
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(config).items() if k in ANALYSIS_FIELDS}
    fields.update(decoding_settings())
    fields["models"] = model_hashes()
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def config_tag(config) -> str:
    """Short hash of every engine setting and the models: the cache key for stored *results* (turns, names,
    confidence evidence), which a clustering or refinement setting changes too; `analysis_tag` covers only
    what the analysis depends on."""
    import hashlib

    fields = {**dataclasses.asdict(config), **decoding_settings(), "models": model_hashes()}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def decoding_settings() -> dict:
    """What decoding does to a recording's samples before the models see them (the working level)."""
    from diarizer import audio as audio_io

    return {"working_level_db": audio_io.WORKING_LEVEL_DB, "level_percentile": audio_io.LEVEL_PERCENTILE}


def model_hashes() -> list[str]:
    """The shipped models' hashes (models/manifest.json): a new export of a model is a new analysis,
    so caches made with the previous one are never reused for it."""
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    return sorted(entry["sha256"] for entry in manifest)


ANALYSIS_FIELDS = {"step_seconds", "min_embed_seconds", "max_embed_seconds", "shared_trunk"}


def cached_analysis(engine, samples, path: Path, cache_dir: Path | None):
    """The engine's segmentation and window prints of `path`, kept in `cache_dir` (named by set, file and
    analysis settings) so that re-clustering or re-scoring never repeats them."""
    cached = cache_dir / f"{path.parent.name}-{path.stem}-{analysis_tag(engine.config)}.pkl" if cache_dir else None
    if cached and cached.is_file():
        return pickle.loads(cached.read_bytes())
    windows = engine.analyse(samples)
    if cached:
        cached.write_bytes(pickle.dumps(windows))
    return windows


def run_set(engine, folder: Path, options, cache_dir: Path | None, oracle: bool = False) -> tuple[dict, float, float]:
    from diarizer import audio as audio_io

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    truth = reference_counts(folder / "reference.rttm") if oracle else {}
    hypothesis, audio_seconds, compute_seconds = {}, 0.0, 0.0
    for path in files:
        began = time.perf_counter()
        samples = audio_io.decode(path)
        duration = len(samples) / 16000
        if oracle:
            options = dataclasses.replace(options, speakers=max(1, truth.get(path.stem, 1)))
        result = engine.resolve(cached_analysis(engine, samples, path, cache_dir), samples, options)
        compute_seconds += time.perf_counter() - began
        audio_seconds += duration
        hypothesis[path.stem] = {**result.to_dict(), "duration": duration}
    return hypothesis, audio_seconds, compute_seconds


def markdown(name: str, report: dict, rtf: float) -> str:
    files = report["files"]
    right = sum(1 for f in files.values() if f["found"] == f["true_speakers"])
    c0, c25 = report["collars"]["0"], report["collars"]["0.25"]
    lines = [
        f"### {name}: DER {100 * c0['der']:.1f} % (collar 0), {100 * c25['der']:.1f} % (collar 0.25 s); "
        f"speaker count right {right}/{len(files)}; real-time factor {rtf:.4f}",
        "",
        "| collar | DER | false alarm | missed | confusion |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, c in report["collars"].items():
        lines.append(
            f"| {label} | {100 * c['der']:.1f} % | {100 * c['false_alarm']:.1f} % | {100 * c['missed']:.1f} % "
            f"| {100 * c['confusion']:.1f} % |"
        )
    lines += ["", "| file | true speakers | found | DER collar 0 | DER collar 0.25 |", "| --- | --- | --- | --- | --- |"]
    for uri, f in sorted(files.items()):
        lines.append(
            f"| {uri} | {f['true_speakers']} | {f['found']} | {100 * f['der_0']:.1f} % | {100 * f['der_0.25']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", dest="sets", help="ami, dev, or a folder (repeatable)")
    parser.add_argument("--param", action="append", default=[], help="pipeline override, e.g. clustering.threshold=0.7")
    parser.add_argument("--speakers", choices=["estimate", "oracle"], default="estimate")
    parser.add_argument("--cache", type=Path, help="reuse segmentation+embeddings from this folder")
    parser.add_argument("--work", type=Path, default=REPO / ".bench", help="where generated sets are kept")
    parser.add_argument("--json", type=Path, help="also write the full report here")
    args = parser.parse_args()
    if not SHARED_EVAL.is_dir():
        print(f"accuracy benchmark needs {SHARED_EVAL} (not part of the repository)", file=sys.stderr)
        return 2
    from diarizer import DiarizationOptions
    from diarizer.pipeline import Diarizer, PipelineConfig

    config = with_overrides(PipelineConfig(), args.param)
    engine = Diarizer(config=config)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    full = {"config": dataclasses.asdict(config), "sets": {}}
    print(f"pipeline: {dataclasses.asdict(config)}\n")
    for name in args.sets or ["ami", "dev"]:
        folder = resolve_set(name, args.work)
        hypothesis, audio_s, compute_s = run_set(
            engine, folder, DiarizationOptions(), args.cache, oracle=args.speakers == "oracle"
        )
        report = score(folder / "reference.rttm", hypothesis, folder / "reference.uem")
        rtf = compute_s / audio_s if audio_s else 0.0
        full["sets"][name] = {**report, "rtf": rtf, "audio_seconds": audio_s}
        print(markdown(name, report, rtf), flush=True)
    if args.json:
        args.json.write_text(json.dumps(full, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
