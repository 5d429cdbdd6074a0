#!/usr/bin/env python3
"""The broad evaluation suite: many conditions, each split into a tuning part and a held-out part.

    python bench/suite.py build                       # generate every condition into .bench/suite (once)
    python bench/suite.py run --part held             # score the held-out part (report this first)
    python bench/suite.py run --part tune --cache .bench/cache --param clustering.threshold=0.6
    python bench/suite.py run --part held --condition long --condition ami
    python bench/suite.py counts --part tune --cache .bench/cache --grid clustering.min_similarity=0.55,0.6,0.65

Every conversation is made by ../shared/eval/make_conversations.py (never stored in the repository).
The split is by seed AND by speakers: the 160 speakers of the pool are divided once, by sorted
LibriSpeech ID (even positions tune, odd positions held out), into two pools of symlinks, and each
part's conversations come from its own pool with its own seeds. AMI excerpts are split by meeting:
the `trn*` excerpts tune, `dev*` and `sample` are held out. Parameters are chosen on `tune` only.
`tune2` is more tuning data (the tuning speakers, seeds of its own, no AMI): a choice that gains on `tune`
must hold there too before the held-out part is looked at, since 80 files alone let chance pass for a gain.
`held2` is more held-out data in the same way (the held-out speakers, seeds of its own, no AMI): with ten files a
condition, one file moves a rate by ten points, so it tells how far the held-out rates are chance. It is never used
for a choice either, and reported after `held`.

Per condition the report gives DER at collar 0 and +-0.25 s (pyannote.metrics, overlap scored) and the
speaker count: exactly right / off by one / off by more.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import REPO, SHARED_EVAL, run_set, score, with_overrides  # noqa: E402

SUITE = REPO / ".bench" / "suite"
PARTS = ("tune", "held", "tune2", "held2")
POOL_OF = {"tune": "tune", "held": "held", "tune2": "tune", "held2": "held"}  # tune2: the tuning speakers again


@dataclass(frozen=True)
class Condition:
    name: str
    args: tuple[str, ...]  # make_conversations.py options beyond pool/out/count/seed/prefix
    count: dict  # part -> number of conversations
    what: str
    low_bitrate_mp3: bool = False  # re-encode the WAVs as MP3 at libsndfile's lowest bitrate
    quieter_db: tuple[float, float] | None = None  # re-write each file this much quieter (dB, drawn per file)
    # one participant per conversation this much quieter than the others (bench/uneven_conversations.py)
    uneven_db: tuple[float, float] | None = None
    # Outside the headline table (run only when named with --condition): added after the held-out rates were
    # first reported, so that they stay comparable from session to session.
    headline: bool = True


CONDITIONS = [
    Condition("clean", ("--speakers", "2-5", "--snr", "none"), {"tune": 10, "held": 10, "tune2": 20, "held2": 20}, "2-5 speakers, no noise"),
    Condition("noisy", ("--speakers", "2-5", "--snr", "0-15"), {"tune": 10, "held": 10, "tune2": 10, "held2": 10}, "2-5 speakers, SNR 0-15 dB"),
    Condition("tel8k", ("--speakers", "2-5", "--sample-rate", "8000", "--format", "wav"), {"tune": 10, "held": 10, "tune2": 20, "held2": 20},
              "telephone band, 8 kHz WAV"),
    Condition("mp3", ("--speakers", "2-5", "--format", "wav"), {"tune": 8, "held": 8, "tune2": 10, "held2": 10},
              "low-bitrate MP3 (libsndfile, constant ~24 kbit/s)", low_bitrate_mp3=True),
    Condition("many", ("--speakers", "7-10", "--minutes", "5-8"), {"tune": 6, "held": 6, "tune2": 6, "held2": 6}, "7-10 speakers, 5-8 min"),
    Condition("dominant", ("--speakers", "2-5", "--balance", "0.3"), {"tune": 10, "held": 10, "tune2": 10, "held2": 10}, "one dominant voice"),
    Condition("short_turns", ("--speakers", "2-5", "--turn", "0.3-2"), {"tune": 10, "held": 10, "tune2": 20, "held2": 20},
              "short turns and back-channels (0.3-2 s)"),
    Condition("monologue", ("--speakers", "1-1",), {"tune": 6, "held": 6, "tune2": 4, "held2": 4}, "one speaker"),
    Condition("long", ("--speakers", "4-10", "--minutes", "30-60"), {"tune": 2, "held": 2}, "30-60 min, 4-10 speakers"),
    Condition("long60_6", ("--speakers", "6-6", "--minutes", "60-60"), {"held": 1}, "60 min, 6 speakers"),
    Condition("long60_10", ("--speakers", "10-10", "--minutes", "60-60"), {"held": 1}, "60 min, 10 speakers"),
    # Added last: a condition's seeds follow its place in this list, so new ones go at the end.
    Condition("quiet", ("--speakers", "2-5"), {"tune": 10, "held": 10, "tune2": 10, "held2": 10},
              "2-5 speakers, recorded 20-40 dB below full scale (16-bit FLAC)", quieter_db=(20.0, 40.0)),
    Condition("uneven", ("--speakers", "2-5"), {"tune": 10, "held": 10, "tune2": 10, "held2": 10},
              "2-5 speakers, one of them 15-25 dB quieter than the others", uneven_db=(15.0, 25.0)),
    # Short clips (a voicemail, a clip cut from a call): too few windows for the estimate to be sure of, so
    # callers pass `speakers`; run with --speakers oracle to see that the count asked for is the count given.
    Condition("clips", ("--speakers", "2-4", "--minutes", "0.2-0.5"), {"tune": 20, "held": 20, "tune2": 20, "held2": 20},
              "clips of 12-30 s, 2-4 speakers", headline=False),
]
AMI_SPLIT = {"tune": ("trn",), "held": ("dev", "sample"), "tune2": (), "held2": ()}
SEED_BASE = {"tune": 1000, "held": 2000, "tune2": 3000, "held2": 4000}  # + 10 * condition index: no seed is shared between parts


def split_pools(root: Path) -> dict[str, Path]:
    """Two pools of symlinks with disjoint speakers (alternating by sorted LibriSpeech speaker ID)."""
    source = SHARED_EVAL / "pool" / "libri"
    speakers = sorted((p for p in source.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    pools = {}
    for offset, part in enumerate(("tune", "held")):
        pool = root / "pools" / part
        pool.mkdir(parents=True, exist_ok=True)
        for folder in speakers[offset::2]:
            link = pool / folder.name
            if not link.exists():
                link.symlink_to(folder.resolve(), target_is_directory=True)
        pools[part] = pool
    return pools


def reencode_mp3(folder: Path) -> None:
    """Re-encode each WAV as a low-bitrate MP3, and move the reference onto the MP3's own timeline.

    At 24 kbit/s LAME's first frame has no room for the Xing/Info frame that tells a decoder to drop the
    encoder's look-ahead and its own delay, so every decoder (libsndfile's mpg123, FFmpeg, a browser) plays
    1105 samples (69 ms) of codec delay before the speech. The engine reports times on that timeline, the
    one a user hears in any player; the generator's reference is on the WAV's. The shift is measured per
    file against the WAV, not assumed."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import correlate

    shifts = {}
    for wav in sorted(folder.glob("*.wav")):
        audio, rate = sf.read(wav, dtype="float32")
        mp3 = wav.with_suffix(".mp3")
        sf.write(mp3, audio, rate, format="MP3", compression_level=0.9, bitrate_mode="CONSTANT")
        decoded, _ = sf.read(mp3, dtype="float32")
        most = rate // 4  # a codec delay is tens of milliseconds
        n = min(len(audio), len(decoded)) - 2 * most
        lag = int(np.argmax(correlate(decoded[: n + 2 * most], audio[most : most + n], mode="valid"))) - most
        shifts[wav.stem] = lag / rate
        wav.unlink()
    reference = folder / "reference.rttm"
    lines = []
    for line in reference.read_text().splitlines():
        fields = line.split()
        fields[3] = f"{float(fields[3]) + shifts.get(fields[1], 0.0):.3f}"
        lines.append(" ".join(fields))
    reference.write_text("\n".join(lines) + "\n")
    (folder / "timeline-shift.json").write_text(json.dumps(shifts, indent=1) + "\n")


def make_quieter(folder: Path, low: float, high: float, seed: int) -> None:
    """Re-write each file `low`-`high` dB quieter as 16-bit FLAC, the way a recorder set too low stores it:
    make_conversations.py always peaks at -1 dBFS, and real recordings do not."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for path in sorted(folder.glob("*.flac")):
        audio, rate = sf.read(path, dtype="float32")
        sf.write(path, audio * np.float32(10 ** (-rng.uniform(low, high) / 20)), rate, format="FLAC", subtype="PCM_16")


def ami_part(root: Path, part: str) -> Path:
    """A folder of symlinks to this part's AMI excerpts, with the reference and UEM lines for them."""
    folder = root / part / "ami"
    folder.mkdir(parents=True, exist_ok=True)
    source = SHARED_EVAL / "ami"
    keep = {p.stem for p in source.glob("*.flac") if p.stem.startswith(AMI_SPLIT[part])}
    for stem in keep:
        link = folder / f"{stem}.flac"
        if not link.exists():
            link.symlink_to((source / f"{stem}.flac").resolve())
    for name in ("reference.rttm", "reference.uem"):
        lines = [line for line in (source / name).read_text().splitlines() if line.split()[1 if name.endswith("rttm") else 0] in keep]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def build(root: Path) -> None:
    pools = split_pools(root)
    for part in PARTS:
        if AMI_SPLIT[part]:
            ami_part(root, part)
        for index, condition in enumerate(CONDITIONS):
            count = condition.count.get(part, 0)
            folder = root / part / condition.name
            if not count or (folder / "reference.rttm").is_file():
                continue
            began = time.time()
            # Made in a scratch folder and renamed when whole: a build stopped half way (say, between the
            # generator and the MP3 re-encoding) must not leave a folder that a re-run takes as finished.
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            generator = [str(SHARED_EVAL / "make_conversations.py")]
            if condition.uneven_db:
                generator = [str(Path(__file__).resolve().parent / "uneven_conversations.py"),
                             "--quieter", "{}-{}".format(*condition.uneven_db)]
            subprocess.run(
                [sys.executable, *generator, "--pool", str(pools[POOL_OF[part]]),
                 "--out", str(partial), "--count", str(count), "--seed", str(SEED_BASE[part] + 10 * index),
                 "--prefix", f"{part}-{condition.name}-", *condition.args],
                check=True, stdout=subprocess.DEVNULL,
            )
            if condition.low_bitrate_mp3:
                reencode_mp3(partial)
            if condition.quieter_db:
                make_quieter(partial, *condition.quieter_db, seed=SEED_BASE[part] + 10 * index)
            shutil.rmtree(folder, ignore_errors=True)  # only ever an unfinished folder of an older build
            partial.rename(folder)
            print(f"{part}/{condition.name}: {count} files in {time.time() - began:.0f} s", flush=True)


def count_errors(files: dict) -> tuple[int, int, int]:
    exact = sum(f["found"] == f["true_speakers"] for f in files.values())
    by_one = sum(abs(f["found"] - f["true_speakers"]) == 1 for f in files.values())
    return exact, by_one, len(files) - exact - by_one


def condition_names(part: str, chosen: list[str]) -> list[str]:
    """The conditions asked for, else every condition this part has (AMI first)."""
    return chosen or ["ami"] * bool(AMI_SPLIT[part]) + [c.name for c in CONDITIONS if c.count.get(part) and c.headline]


def run(root: Path, part: str, conditions: list[str], params: list[str], cache: Path | None, speakers: str) -> dict:
    from diarizer import DiarizationOptions
    from diarizer.pipeline import Diarizer, PipelineConfig

    config = with_overrides(PipelineConfig(), params)
    engine = Diarizer(config=config)
    names = condition_names(part, conditions)
    report = {}
    for name in names:
        folder = root / part / name
        if not (folder / "reference.rttm").is_file():
            raise SystemExit(f"{folder} is missing: run `python bench/suite.py build` first")
        if cache:
            (cache / part).mkdir(parents=True, exist_ok=True)
        hypothesis, audio_s, compute_s = run_set(
            engine, folder, DiarizationOptions(), cache / part if cache else None, oracle=speakers == "oracle"
        )
        scored = score(folder / "reference.rttm", hypothesis, folder / "reference.uem")
        report[name] = {**scored, "rtf": compute_s / audio_s if audio_s else 0.0, "audio_seconds": audio_s}
        print(row(name, report[name]), flush=True)
    return report


HEADER = (
    "| condition | files | minutes | DER collar 0 | DER ±0.25 s | miss / FA / conf. (collar 0) | count exact | off by one | off by more | count errors (found - true) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def row(name: str, entry: dict) -> str:
    c0, c25 = entry["collars"]["0"], entry["collars"]["0.25"]
    exact, by_one, more = count_errors(entry["files"])
    return (
        f"| {name} | {len(entry['files'])} | {entry['audio_seconds'] / 60:.0f} | {100 * c0['der']:.1f} % | {100 * c25['der']:.1f} % "
        f"| {100 * c0['missed']:.1f} / {100 * c0['false_alarm']:.1f} / {100 * c0['confusion']:.1f} "
        f"| {exact} | {by_one} | {more} | {signed_errors(entry['files'])} |"
    )


def signed_errors(files: dict) -> str:
    """e.g. "-1 x2, +1": how far off the wrong counts are, under-counts first."""
    from collections import Counter

    deltas = Counter(f["found"] - f["true_speakers"] for f in files.values() if f["found"] != f["true_speakers"])
    return ", ".join(f"{d:+d}" + (f" x{n}" if n > 1 else "") for d, n in sorted(deltas.items())) or "none"


def totals(report: dict) -> str:
    files = {f"{c}/{u}": f for c, e in report.items() for u, f in e["files"].items()}
    exact, by_one, more = count_errors(files)
    return f"overall: {len(files)} files, count exact {exact} ({100 * exact / max(len(files), 1):.0f} %), off by one {by_one}, off by more {more}"


def found_counts(report: dict) -> dict[str, int]:
    return {f"{c}/{u}": f["found"] for c, e in report.items() for u, f in e["files"].items()}


def margin(args) -> int:
    """Does any file's speaker count move when one tuned parameter moves by -10 % or +10 %?"""
    import dataclasses

    from accuracy import with_overrides
    from diarizer.pipeline import PipelineConfig

    base_config = with_overrides(PipelineConfig(), args.param)
    print("### base", flush=True)
    base = run(args.root, args.part, args.condition, args.param, args.cache, args.speakers)
    base_counts = found_counts(base)
    lines = ["| parameter | value | -10 % | +10 % |", "| --- | --- | --- | --- |"]
    for name in args.vary:
        value = base_config
        for part in name.split("."):
            value = getattr(value, part)
        cells = []
        for factor in (0.9, 1.1):
            moved = type(value)(round(value * factor, 6) if isinstance(value, float) else round(value * factor))
            print(f"### {name}={moved}", flush=True)
            report = run(args.root, args.part, args.condition, args.param + [f"{name}={json.dumps(moved)}"], args.cache, args.speakers)
            changed = [f"{k} {base_counts[k]}->{v}" for k, v in found_counts(report).items() if v != base_counts[k]]
            der = sum(e["collars"]["0"]["der"] * e["audio_seconds"] for e in report.values()) / sum(e["audio_seconds"] for e in report.values())
            cells.append(f"{moved}: {len(changed)} counts changed{' (' + ', '.join(changed) + ')' if changed else ''}, DER {100 * der:.1f} %")
        lines.append(f"| {name} | {value} | {cells[0]} | {cells[1]} |")
    print("\n".join(lines))
    return 0


def counts(args) -> int:
    """Speaker counts only, re-clustering the cached analyses for every combination of --grid values.

    Seconds per combination instead of a full run (no decoding, no turn refinement, no scoring), so a
    parameter can be swept across every condition before a full run confirms the best one. The count is
    the clustering's; turn refinement can still empty a speaker (it rarely does: the margin table in
    BENCHMARKS.md has the same counts with and without it). With shared prints, the close calls are
    re-printed as the engine re-prints them, from the cached whole-clip analysis of the same file
    (`run --param shared_trunk=false --cache` makes it).
    """
    import dataclasses
    import itertools
    import pickle

    from accuracy import analysis_tag, reference_counts
    from diarizer import DiarizationOptions
    from diarizer.pipeline import PipelineConfig, cluster_with_reprints

    if not args.cache:
        raise SystemExit("counts re-clusters cached analyses: give --cache (filled by `run --cache`)")
    names = condition_names(args.part, args.condition)
    base = with_overrides(PipelineConfig(), args.param)
    whole = dataclasses.replace(base, shared_trunk=False)
    files = []  # (condition, true count, cached analysis, cached whole-clip analysis or None)
    for name in names:
        folder = args.root / args.part / name
        for uri, truth in sorted(reference_counts(folder / "reference.rttm").items()):
            analyses = []
            for config in (base, whole) if base.shared_trunk else (base,):  # a grid may turn re-prints on
                cached = args.cache / args.part / f"{name}-{uri}-{analysis_tag(config)}.pkl"
                if not cached.is_file():
                    params = " ".join(f"--param {p}" for p in args.param + (["shared_trunk=false"] if config is whole else []))
                    raise SystemExit(f"{cached} is missing: run `python bench/suite.py run --part {args.part} "
                                     f"--condition {name} --cache {args.cache} {params}` first")
                analyses.append(pickle.loads(cached.read_bytes()))
            files.append((name, truth, analyses[0], analyses[1] if len(analyses) > 1 else None))
    axes = [(g.split("=", 1)[0], g.split("=", 1)[1].split(",")) for g in args.grid]
    print("| " + " | ".join([n for n, _ in axes] + ["count exact"] + names) + " |")
    print("|" + " --- |" * (len(axes) + 1 + len(names)))
    for values in itertools.product(*[v for _, v in axes]):
        config = with_overrides(base, [f"{n}={v}" for (n, _), v in zip(axes, values)])
        if analysis_tag(config) != analysis_tag(base):
            raise SystemExit("--grid may only vary settings that act after the analysis (clustering, floors)")
        errors: dict[str, list[int]] = {name: [] for name in names}
        for name, truth, windows, whole_clip in files:
            _, labels = cluster_with_reprints(windows, config, DiarizationOptions(),
                                              lambda which: reprinted(windows, whole_clip, which))
            found = int(labels.max()) + 1
            errors[name].append(found - truth)
        exact = sum(e == 0 for v in errors.values() for e in v)
        cells = [f"{sum(e == 0 for e in v)}/{len(v)} ({sum(e < 0 for e in v)}−, {sum(e > 0 for e in v)}+)"
                 for v in errors.values()]
        print("| " + " | ".join(list(values) + [f"{exact}/{len(files)}"] + cells) + " |", flush=True)
    return 0


def reprinted(windows, whole_clip, which):
    """`windows` with the prints `which` taken from the whole-clip analysis of the same file: what the
    engine's re-print makes (the same segmentation, the same frames, the whole network)."""
    from diarizer.pipeline import with_prints

    return with_prints(windows, which, whole_clip.embeddings, whole_clip.seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["build", "run", "margin", "counts", "list"])
    parser.add_argument("--grid", action="append", default=[],
                        help="counts: NAME=V1,V2,... values to combine (repeatable)")
    parser.add_argument("--vary", action="append", default=[],
                        help="margin: a tuned parameter to move by -10 %% and +10 %% (repeatable)")
    parser.add_argument("--part", choices=PARTS, default="held")
    parser.add_argument("--condition", action="append", default=[], help="only these conditions (repeatable)")
    parser.add_argument("--param", action="append", default=[], help="pipeline override, e.g. clustering.threshold=0.7")
    parser.add_argument("--speakers", choices=["estimate", "oracle"], default="estimate")
    parser.add_argument("--cache", type=Path, help="reuse segmentation+embeddings from this folder")
    parser.add_argument("--root", type=Path, default=SUITE)
    parser.add_argument("--json", type=Path, help="also write the full report here")
    args = parser.parse_args()
    if not SHARED_EVAL.is_dir():
        print(f"the evaluation suite needs {SHARED_EVAL} (not part of the repository)", file=sys.stderr)
        return 2
    if args.action == "list":
        for c in CONDITIONS:
            parts = "  ".join(f"{part} {c.count.get(part, 0):2}" for part in PARTS)
            print(f"{c.name:12} {parts}  {c.what}  {' '.join(c.args)}")
        return 0
    if args.action == "build":
        build(args.root)
        return 0
    if args.action == "margin":
        return margin(args)
    if args.action == "counts":
        return counts(args)
    print(HEADER, flush=True)
    report = run(args.root, args.part, args.condition, args.param, args.cache, args.speakers)
    print(totals(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"part": args.part, "params": args.param, "conditions": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
