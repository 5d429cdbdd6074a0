"""The `diarize` command.

    diarize AUDIO... [--speakers N] [--min-speakers N] [--max-speakers N] [--rttm OUT.rttm] [--json OUT.json]
    diarize AUDIO --html OUT.html [--embed-audio]   (a page with the timeline and a player)
    diarize AUDIO... --identify [--voiceprints FILE] [--confidence]   (names from enrolled voiceprints; a
                                                                   --voiceprints FILE alone means --identify)
    diarize enroll NAME AUDIO... [--voiceprints FILE]        (enrol one person's voice)
    diarize voiceprints [--voiceprints FILE] [--delete NAME] (list or delete enrolled voiceprints)
    diarize serve [--host 127.0.0.1] [--port 3000] ...      (the local service; see `diarize serve -h`)

With neither --rttm nor --json the result is printed as JSON on stdout. One file gives the API's
Diarized object; several give an object keyed by file ID (the file name without extension; "-2",
"-3"... where two files share a name), and the RTTM holds them all. Progress goes to stderr; a file that fails is named with the reason, the
others still run, and the exit code is 1.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path

from diarizer.types import DiarizationError, DiarizationOptions
from diarizer.voiceprints import VoiceprintFile, default_store_path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _speakers(text: str) -> int:
    value = int(text)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError("must be -1 (estimate) or a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diarize",
        description="Who spoke when: speaker diarization of audio files (WAV, FLAC, OGG, MP3, AIFF, AU; M4A/AAC, "
                    "MP4/MOV, WebM, AMR, WMA and CAF with the 'transcode' extra). The result is printed as JSON on stdout unless "
                    "--json, --rttm or --html is given.",
        epilog="Also: `diarize enroll NAME AUDIO...` (enrol a voice), `diarize voiceprints` (list or delete them) and "
               "`diarize serve` (the local HTTP service); each has its own -h.",
    )
    parser.add_argument("audio", nargs="+", type=Path, help="audio files")
    parser.add_argument("--speakers", type=_speakers, default=-1, help="exact number of speakers (default: estimate)")
    parser.add_argument("--min-speakers", type=_positive, help="lower bound for the estimate")
    parser.add_argument("--max-speakers", type=_positive, help="upper bound for the estimate")
    parser.add_argument("--exclusive", action="store_true", help="one speaker at a time (no overlapping turns)")
    parser.add_argument(
        "--no-merge", action="store_true", help="keep every turn (do not join close turns of the same speaker)"
    )
    parser.add_argument("--rttm", type=Path, help="write all results to this RTTM file (instead of stdout)")
    parser.add_argument("--json", type=Path, help="write the result(s) to this JSON file (instead of stdout)")
    parser.add_argument("--html", type=Path, metavar="OUT.html",
                        help="write a page with the timeline, a player and downloads (one AUDIO); the page refers "
                             "to the audio by its relative path")
    parser.add_argument("--embed-audio", action="store_true",
                        help="with --html: put the audio inside the page (files up to 25 MB)")
    parser.add_argument("--identify", action="store_true",
                        help="name the speakers whose voice matches an enrolled voiceprint (see `diarize enroll`)")
    parser.add_argument("--confidence", action="store_true",
                        help="give each segment a calibrated probability that its speaker is right")
    _voiceprints_option(parser, " (naming one means --identify)")
    parser.add_argument("--model-dir", type=Path, help="folder with manifest.json and the ONNX models")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _voiceprints_option(parser: argparse.ArgumentParser, also: str = "") -> None:
    parser.add_argument("--voiceprints", type=Path, metavar="FILE",
                        help=f"voiceprint file (default: {default_store_path()}){also}")


def _progress_printer(name: str, enabled: bool):
    last = [-1]

    def report(fraction: float) -> None:
        percent = int(fraction * 100) // 10 * 10
        if enabled and percent > last[0]:
            last[0] = percent
            print(f"{name}: {percent}%", file=sys.stderr, flush=True)

    return report


def run(args: argparse.Namespace) -> int:
    if args.html and len(args.audio) != 1:
        print("diarize: error: --html takes one AUDIO file", file=sys.stderr)
        return 2
    if args.embed_audio and not args.html:
        print("diarize: error: --embed-audio goes with --html", file=sys.stderr)
        return 2
    clash = _output_clash(args)
    if clash:
        print(f"diarize: error: {clash}", file=sys.stderr)
        return 2
    if args.embed_audio:
        from diarizer.report import ReportError, check_embeddable

        try:
            check_embeddable(args.audio[0])
        except (ReportError, OSError) as err:  # before minutes of diarization, not after
            print(f"diarize: error: {err}", file=sys.stderr)
            return 2
    # A voiceprint file named for a diarization is there to name people: it asks for --identify too (it was
    # silently ignored without it).
    identify = args.identify or args.voiceprints is not None
    try:
        options = DiarizationOptions(
            speakers=args.speakers,
            min_speakers=args.min_speakers,
            max_speakers=args.max_speakers,
            merge_adjacent=not args.no_merge,
            exclusive=args.exclusive,
            identify=identify,
            voiceprints=tuple(VoiceprintFile(args.voiceprints).load()) if identify else (),
            confidence=args.confidence,
        )
    except (DiarizationError, ValueError, OSError) as err:
        print(f"diarize: error: {err}", file=sys.stderr)
        return 2
    if identify and not options.voiceprints and not args.quiet:
        print(f"diarize: no voiceprints in {VoiceprintFile(args.voiceprints).path}: nobody can be named "
              "(enrol with `diarize enroll NAME AUDIO...`)", file=sys.stderr)
    from diarizer.pipeline import Diarizer

    try:
        engine = Diarizer(model_dir=args.model_dir)
    except (OSError, ValueError) as err:  # missing models; a bad DIARIZER_THREADS
        print(f"diarize: error: cannot load the models: {err}", file=sys.stderr)
        return 1
    results, rttm, failed = {}, [], 0
    for path, file_id in zip(args.audio, _file_ids(args.audio)):
        began = time.perf_counter()
        try:
            result = engine.diarize(path, options, progress=_progress_printer(path.name, not args.quiet))
        except (DiarizationError, OSError) as err:
            print(f"diarize: error: {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        elapsed = time.perf_counter() - began
        if not args.quiet:
            rtf = elapsed / result.duration if result.duration else 0.0
            print(
                f"{path.name}: {result.num_speakers} speakers, {len(result.segments)} segments, "
                f"{result.duration:.1f} s of audio in {elapsed:.1f} s (real-time factor {rtf:.3f})",
                file=sys.stderr,
            )
        results[file_id] = result.to_dict()
        rttm.append(result.to_rttm(file_id))
        if args.html and not _write_html(args, path, result):
            failed += 1
    document = next(iter(results.values())) if len(args.audio) == 1 and results else results
    for out, text in ((args.rttm, "".join(rttm)), (args.json, json.dumps(document, indent=2) + "\n")):
        try:
            if out:
                # surrogateescape: a file name that is not UTF-8 (Latin-1 from an old archive) keeps its bytes
                out.write_text(text, encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            print(f"diarize: error: cannot write {out}: {err}", file=sys.stderr)
            failed += 1
    if not args.rttm and not args.json and not args.html and results:
        try:
            print(json.dumps(document, indent=2), flush=True)
        except BrokenPipeError:
            raise
        except OSError as err:  # a full disk behind `> out.json`
            print(f"diarize: error: cannot write the result to stdout: {err}", file=sys.stderr)
            return 1
    return 1 if failed else 0


def _output_clash(args: argparse.Namespace) -> str | None:
    """Why the outputs asked for would overwrite an input recording or each other (`--json talk.wav` destroyed
    the recording), or None. Checked before any work."""
    outputs = [(flag, path) for flag, path in (("--rttm", args.rttm), ("--json", args.json), ("--html", args.html))
               if path]
    for index, (flag, path) in enumerate(outputs):
        for audio in args.audio:
            if _same_file(path, audio):
                return f"{flag} {path} is the input recording {audio}: it would be overwritten"
        for other_flag, other in outputs[:index]:
            if _same_file(path, other):
                return f"{other_flag} and {flag} name the same file ({path}): one would overwrite the other"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(a).st_mode):  # /dev/null, /dev/stdout on a terminal or a pipe: no clash
            return False
        return os.path.samefile(a, b)  # hard and symbolic links included
    except OSError:  # one of them does not exist yet: compare where they would be
        return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def _file_ids(paths: list[Path]) -> list[str]:
    """One ID per file: its name without extension, whitespace made "_" (RTTM fields are space separated),
    and "-2", "-3"... on repeats (a/clip.wav and b/clip.wav must not overwrite each other's result)."""
    ids: list[str] = []
    for path in paths:
        base = "_".join(path.stem.split()) or "audio"
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}-{n}"
        ids.append(candidate)
    return ids


def _write_html(args: argparse.Namespace, path: Path, result) -> bool:
    from diarizer.audio import probe_audio
    from diarizer.report import ReportError, write_html

    try:
        write_html(args.html, result.to_dict(), path, duration=result.duration,
                   audio_format=probe_audio(path).format, embed_audio=args.embed_audio)
    except (ReportError, OSError) as err:
        print(f"diarize: error: {args.html}: {err}", file=sys.stderr)
        return False
    if not args.quiet:
        print(f"wrote {args.html}", file=sys.stderr)
    return True


def enroll_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diarize enroll", description="Enrol one person's voice: at least 5 s "
                                     "of speech of that person alone (10-30 s is best), in one or more files.")
    parser.add_argument("name", help="the name diarization will give this voice")
    parser.add_argument("audio", nargs="+", type=Path, help="recordings of this one voice")
    _voiceprints_option(parser)
    parser.add_argument("--model-dir", type=Path, help="folder with manifest.json and the ONNX models")
    args = parser.parse_args(argv)
    store = VoiceprintFile(args.voiceprints)
    from diarizer.pipeline import Diarizer

    try:
        store.load()  # refuse early if the file is not a voiceprint file
        voiceprint = Diarizer(model_dir=args.model_dir).enroll(args.name, list(args.audio))
        replaced = store.save(voiceprint)
    except (DiarizationError, ValueError, OSError) as err:
        print(f"diarize enroll: error: {err}", file=sys.stderr)
        return 1
    print(f"diarize enroll: {'replaced' if replaced else 'enrolled'} {voiceprint.name!r} in {store.path}",
          file=sys.stderr)
    print(json.dumps({"name": voiceprint.name, "seconds": voiceprint.seconds}, indent=2))
    return 0


def voiceprints_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diarize voiceprints", description="List or delete enrolled voiceprints.")
    _voiceprints_option(parser)
    parser.add_argument("--delete", metavar="NAME", help="delete this person's voiceprint")
    args = parser.parse_args(argv)
    store = VoiceprintFile(args.voiceprints)
    try:
        if args.delete is not None:
            if not store.delete(args.delete):
                print(f"diarize voiceprints: error: no voiceprint named {args.delete!r} in {store.path}",
                      file=sys.stderr)
                return 1
            print(json.dumps({"name": args.delete, "deleted": True}, indent=2))
            return 0
        print(json.dumps({"voiceprints": store.entries()}, indent=2))
    except (ValueError, OSError) as err:
        print(f"diarize voiceprints: error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # `diarize a.wav | head` closed stdout early: stop quietly, as other Unix tools do, and keep
        # Python's exit-time flush from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["enroll"]:
        return enroll_main(argv[1:])
    if argv[:1] == ["voiceprints"]:
        return voiceprints_main(argv[1:])
    if argv[:1] == ["serve"]:
        # The local service lives in the service package; the engine itself stays AWS-free.
        from diarizer_service.local_server import main as serve_main

        return serve_main(argv[1:])
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
