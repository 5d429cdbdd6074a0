#!/usr/bin/env python3
"""make_conversations.py with one participant much quieter than the others: a remote caller on a weak line,
someone far from the only microphone. The suite's `uneven` condition (bench/suite.py) is made with it.

    python bench/uneven_conversations.py --quieter 15-25 <make_conversations.py options>

`make_conversations.py` (../shared/eval, not part of the repository) draws each speaker's gain within +-6 dB; this
wraps its `conversation` step so that in each conversation the participant with the median amount of speech
(never the one who talks most) is a further `--quieter` dB down, drawn per conversation. The reference stays
exact: the script marks speech on each turn's own clean audio, relative to that turn's peak.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED_EVAL  # noqa: E402

sys.path.insert(0, str(SHARED_EVAL))
import make_conversations  # noqa: E402


def quieter_participant(conversation, low: float, high: float):
    """`conversation` (make_conversations' step) with its median talker `low`-`high` dB quieter."""

    def wrapped(rng, pool, cache, args):
        turns, length = conversation(rng, pool, cache, args)
        talk: dict[str, float] = {}
        for turn in turns:
            talk[turn.speaker] = talk.get(turn.speaker, 0.0) + len(turn.audio)
        if len(talk) < 2:
            return turns, length
        ranked = sorted(talk, key=lambda name: (-talk[name], name))
        quiet = ranked[len(ranked) // 2]  # the median talker; with two, the one who talks less
        gain = np.float32(10 ** (-rng.uniform(low, high) / 20))
        return [dataclasses.replace(t, audio=t.audio * gain) if t.speaker == quiet else t for t in turns], length

    return wrapped


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) < 2 or argv[0] != "--quieter":
        raise SystemExit(__doc__)
    low, high = make_conversations.span(argv[1])
    make_conversations.conversation = quieter_participant(make_conversations.conversation, low, high)
    sys.argv = [str(SHARED_EVAL / "make_conversations.py"), *argv[2:]]
    make_conversations.main()


if __name__ == "__main__":
    main()
