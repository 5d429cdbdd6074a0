"""How many engine workers a process makes: one per core it may use, never one per core of the host. Each worker
holds its own ONNX sessions (about 43 MB): DIARIZER_THREADS=1000 asked for 43 GB, and a container limited to
2 CPUs on a 64-core host made 64 (found by fuzzing the library, fourteenth session)."""
from __future__ import annotations

import os

import pytest

from diarizer import models


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2, docker --cpus=2
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),  # unlimited
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
    ({"cpu.max": "garbage"}, None),
])
def test_the_containers_cpu_quota_is_read(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert models._cgroup_cpu_quota(tmp_path) == expected


def test_a_quota_below_the_cores_bounds_the_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(models, "_cgroup_cpu_quota", lambda: 1.5)
    assert models.available_cpus() == 2  # 1.5 CPUs of time: two threads keep them busy
    monkeypatch.setattr(models, "_cgroup_cpu_quota", lambda: None)
    assert models.available_cpus() == 64


def test_an_explicit_thread_count_is_capped_at_the_cores_available(monkeypatch):
    monkeypatch.setattr(models, "available_cpus", lambda: 4)
    for raw, expected in (("1000", 4), ("3", 3), ("", 4)):
        monkeypatch.setenv("DIARIZER_THREADS", raw)
        assert models.default_threads() == expected
    monkeypatch.setenv("DIARIZER_THREADS", "9" * 400)
    with pytest.raises(ValueError, match="DIARIZER_THREADS"):
        models.default_threads()


def test_the_engine_makes_no_more_workers_than_cores(monkeypatch):
    from diarizer.pipeline import Diarizer

    monkeypatch.setattr("diarizer.pipeline.available_cpus", lambda: 2)
    assert len(Diarizer(threads=50)._workers) == 2
    assert len(Diarizer(threads=1)._workers) == 1
