"""The CLI's voiceprint file under what users do to files: parallel enrolments, symlinks, newer versions, damage.
Each case was found by fuzzing the CLI (fourteenth session) and failed before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diarizer.types import Voiceprint
from diarizer.voiceprints import VoiceprintFile


def voiceprint(name: str, seed: int = 0) -> Voiceprint:
    vector = np.random.default_rng(seed).normal(size=192)
    return Voiceprint(name, tuple(float(x) for x in vector / np.linalg.norm(vector)), 12.0)


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path):
    """Both read-modify-write the file: without the lock, 77 of 200 voiceprints were lost."""
    path = tmp_path / "voiceprints.json"
    script = ("import sys, numpy as np\n"
              "from diarizer.types import Voiceprint\n"
              "from diarizer.voiceprints import VoiceprintFile\n"
              "store = VoiceprintFile(sys.argv[1])\n"
              "for i in range(60):\n"
              "    store.save(Voiceprint(f'{sys.argv[2]}-{i}', tuple(np.ones(192) / 192 ** 0.5), 10.0))\n")
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), who]) for who in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    names = {v.name for v in VoiceprintFile(path).load()}
    assert names == {f"{who}-{i}" for who in ("a", "b") for i in range(60)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_symlinked_file_is_updated_where_it_lives(tmp_path):
    """A dotfile manager's or a synced folder's link: the replace made it a plain file and the real one drifted."""
    real = tmp_path / "synced" / "voiceprints.json"
    real.parent.mkdir()
    VoiceprintFile(real).save(voiceprint("alice"))
    link = tmp_path / "voiceprints.json"
    link.symlink_to(real)
    VoiceprintFile(link).save(voiceprint("bob", 1))
    assert link.is_symlink()
    assert sorted(v.name for v in VoiceprintFile(real).load()) == ["alice", "bob"]
    assert VoiceprintFile(link).delete("alice") and link.is_symlink()
    assert [v.name for v in VoiceprintFile(real).load()] == ["bob"]


def test_a_temp_file_planted_as_a_symlink_is_not_written_through(tmp_path):
    """The temp file had a predictable name and was opened through symlinks: a planted link made a save
    overwrite another file (in a shared folder)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    path = tmp_path / "voiceprints.json"
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (tmp_path / f".voiceprints.json.{pid}.tmp").symlink_to(victim)
    VoiceprintFile(path).save(voiceprint("alice"))
    assert victim.read_text() == "precious data" and (victim.stat().st_mode & 0o777) != 0o600
    assert [v.name for v in VoiceprintFile(path).load()] == ["alice"]


def test_a_file_from_a_newer_version_is_refused_not_rewritten(tmp_path):
    path = tmp_path / "voiceprints.json"
    newer = {"format": "diarizer-voiceprints", "version": 2, "voiceprints": [], "calibration": {"threshold": 0.8}}
    path.write_text(json.dumps(newer))
    store = VoiceprintFile(path)
    for action in (store.load, lambda: store.save(voiceprint("alice")), lambda: store.delete("alice")):
        with pytest.raises(ValueError, match="newer diarizer"):
            action()
    assert json.loads(path.read_text()) == newer


def _document(item_changes: dict) -> str:
    item = {"name": "alice", "seconds": 12.0, "embedding": [0.1] * 192, **item_changes}
    return json.dumps({"format": "diarizer-voiceprints", "version": 1, "voiceprints": [item]})


@pytest.mark.parametrize("text", [
    '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError in json
    _document({}).replace("0.1,", "1" + "0" * 400 + ",", 1),  # an integer float() overflows on
    _document({"seconds": float("nan")}),  # printed back as NaN: not JSON
    _document({"seconds": True}),
    _document({"seconds": -3}),
    _document({"embedding": [0.0] * 192}),  # no direction: it could never match anyone
], ids=["deep", "bigint", "nan-seconds", "bool-seconds", "negative-seconds", "zero-vector"])
def test_a_damaged_file_is_named_as_such(tmp_path, text):
    path = tmp_path / "voiceprints.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)):
        VoiceprintFile(path).entries()
    assert path.read_text() == text


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_what_is_not_a_regular_file_is_refused_without_reading_it(tmp_path, kind):
    """A FIFO blocked the read forever, /dev/zero read until MemoryError."""
    if kind == "fifo":
        path = tmp_path / "voiceprints.json"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path / "voiceprints.json"
        path.mkdir()
    else:
        path = tmp_path / "voiceprints.json"
        path.symlink_to("/dev/zero")
    code = ("import sys\nfrom diarizer.voiceprints import VoiceprintFile\n"
            "try:\n    VoiceprintFile(sys.argv[1]).entries()\nexcept ValueError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert "not a voiceprint file" in done.stdout, (done.stdout, done.stderr)


def test_a_symlink_loop_is_an_os_error_not_a_crash(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    store = VoiceprintFile(tmp_path / "a")
    for action in (store.entries, lambda: store.save(voiceprint("alice")), lambda: store.delete("alice")):
        with pytest.raises(OSError):
            action()
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


@pytest.mark.parametrize("bad", [
    Voiceprint("zero", (0.0,) * 192, 10.0),
    Voiceprint("nan-seconds", voiceprint("x").embedding, float("nan")),
    Voiceprint("bool-seconds", voiceprint("x").embedding, True),
    Voiceprint("short", (0.1,) * 10, 10.0),
])
def test_save_refuses_what_the_file_could_not_read_back(tmp_path, bad):
    """Saved, such an entry made every later read call the whole file damaged."""
    store = VoiceprintFile(tmp_path / "voiceprints.json")
    store.save(voiceprint("alice"))
    with pytest.raises(ValueError):
        store.save(bad)
    assert [v.name for v in store.load()] == ["alice"]


def test_a_damaged_entry_can_still_be_deleted_by_name(tmp_path):
    path = tmp_path / "voiceprints.json"
    good = {"name": "alice", "seconds": 12.0, "embedding": list(voiceprint("alice").embedding)}
    path.write_text(json.dumps({"format": "diarizer-voiceprints", "version": 1,
                                "voiceprints": [good, {"name": "broken", "seconds": "?", "embedding": []}]}))
    store = VoiceprintFile(path)
    with pytest.raises(ValueError, match="damaged"):
        store.entries()
    assert store.delete("broken")
    assert [v.name for v in store.load()] == ["alice"]


def test_a_writer_that_dies_before_the_replace_leaves_no_copy_past_a_deletion(tmp_path):
    """Crash point between writing the temp file and replacing the file: the temp file holds every voiceprint
    of the file. The next change under the lock removes it, so deleting a voiceprint deletes every copy."""
    path = tmp_path / "voiceprints.json"
    VoiceprintFile(path).save(voiceprint("alice"))
    script = ("import os, sys, numpy as np\n"
              "from diarizer.types import Voiceprint\n"
              "from diarizer.voiceprints import VoiceprintFile\n"
              "os.replace = lambda *args: os._exit(9)  # the process dies right before the replace\n"
              "VoiceprintFile(sys.argv[1]).save(Voiceprint('bob', tuple(np.ones(192) / 192 ** 0.5), 10.0))\n")
    assert subprocess.run([sys.executable, "-c", script, str(path)], timeout=60).returncode == 9
    stray = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    alice_number = repr(round(voiceprint("alice").embedding[0], 7))
    assert len(stray) == 1 and alice_number in stray[0].read_text()  # the crash point is real
    assert [v.name for v in VoiceprintFile(path).load()] == ["alice"]  # the file itself is intact

    assert VoiceprintFile(path).delete("alice")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert not any(alice_number in p.read_text() for p in tmp_path.iterdir() if p.is_file())


def test_only_this_files_own_temp_files_are_taken_for_stale(tmp_path):
    """`voiceprints.json.bak` in the same folder has its own lock: its writer's temp file, being written at this
    moment, matched a loose pattern for `voiceprints.json` and was deleted under it (its save then failed)."""
    path = tmp_path / "voiceprints.json"
    others = [tmp_path / ".voiceprints.json.bak.ld4l1jt_.tmp", tmp_path / ".voiceprints.json.1.abcdefgh.tmp",
              tmp_path / ".voiceprints.json.abc.tmp"]
    stale = tmp_path / ".voiceprints.json.k2_9zq0a.tmp"
    for p in [*others, stale]:
        p.write_text("{}")
    VoiceprintFile(path).save(voiceprint("alice"))
    assert all(p.exists() for p in others) and not stale.exists()
