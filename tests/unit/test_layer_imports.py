"""The built Lambda trees work on their own: imports and one real diarization, nothing from this venv.

Each check runs in a fresh CPython 3.12 (the Lambda runtime's version, since the layers hold cp312
wheels) started with ``-S -s`` (no site-packages, no user site) and ``PYTHONPATH`` set to ONLY what
Lambda would put on sys.path for that function: its code folder (/var/task), its layers' python/
folders (/opt/python) and a copy of boto3/botocore standing in for the boto3 that the Lambda runtime
ships. The models layer is used through DIARIZER_MODEL_DIR, as /opt/models is in Lambda.

The trees come from ``python layers/build.py`` (build/lambda/, rebuilt only when requirements or the
build script change). Skips, with the reason, when no python3.12 is found (set DIARIZER_LAMBDA_PYTHON)
or when the wheels cannot be downloaded.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "lambda"
DEMO = REPO / "demo" / "two-speakers.flac"
# What the Lambda python3.12 runtime provides besides the standard library.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")


def _find_python312() -> str | None:
    explicit = os.environ.get("DIARIZER_LAMBDA_PYTHON")
    if explicit:
        return explicit
    candidates = [shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    candidates += ["/usr/bin/python3.12", "/usr/local/bin/python3.12"]
    for c in candidates:
        if not c or not os.path.exists(c):
            continue
        ok = subprocess.run([c, "-S", "-c", "import sys; assert sys.version_info[:2] == (3, 12)"], capture_output=True)
        if ok.returncode == 0:
            return c
    return None


@pytest.fixture(scope="module")
def python312() -> str:
    exe = _find_python312()
    if not exe:
        pytest.skip("no CPython 3.12 found (the layers hold cp312 wheels): set DIARIZER_LAMBDA_PYTHON")
    return exe


@pytest.fixture(scope="module")
def tree() -> Path:
    """build/lambda/, (re)built by layers/build.py."""
    r = subprocess.run([sys.executable, str(REPO / "layers" / "build.py"), "--out", str(BUILD)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if "pip" in r.stderr and ("Could not find" in r.stderr or "No matching distribution" in r.stderr
                                  or "connection" in r.stderr.lower()):
            pytest.skip("cannot download the Lambda wheels: " + r.stderr.strip().splitlines()[-1])
        pytest.fail("layers/build.py failed:\n" + r.stderr[-3000:])
    return BUILD


@pytest.fixture(scope="module")
def runtime_sim(tmp_path_factory) -> Path:
    """A folder with boto3 & co, as /var/runtime has them in Lambda (pure Python, copied from this venv)."""
    out = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            pytest.skip(f"{name} is not installed here to stand in for the Lambda runtime's copy")
        src = Path(spec.origin)
        if src.name == "__init__.py":
            shutil.copytree(src.parent, out / src.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, out / src.name)
    return out


def _run(python: str, paths: list[Path], code: str, tmp_path: Path, extra_env: dict | None = None) -> dict:
    """Run `code` in a clean CPython with sys.path = paths (+ stdlib); it prints one JSON line last."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
        "PYTHONDONTWRITEBYTECODE": "1",  # like Lambda's read-only /opt and /var/task
        "LANG": "C.UTF-8",
        "DIARIZER_BACKEND": "aws",
        "DIARIZER_BUCKET": "test-bucket",
        "DIARIZER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/test",
        "DIARIZER_JOBS_TABLE": "jobs",
        "DIARIZER_KEYS_TABLE": "keys",
        "DIARIZER_ALLOW_LOCAL_WEBHOOKS": "false",
        "POWERTOOLS_SERVICE_NAME": "diarizer",
        "POWERTOOLS_METRICS_NAMESPACE": "DiarizerTests",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # keep this machine's OpenBLAS workarounds
        if name in os.environ:
            env[name] = os.environ[name]
    prelude = textwrap.dedent("""
        import json, sys
        assert not any("site-packages" in p for p in sys.path), sys.path
        """)
    r = subprocess.run([python, "-S", "-s", "-c", prelude + textwrap.dedent(code)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# Run inside a function tree: which of the engine's heavy dependencies cannot be imported there.
MISSING_HEAVY = textwrap.dedent("""
    def missing_heavy():
        import importlib
        missing = []
        for heavy in ("onnxruntime", "scipy"):
            try:
                importlib.import_module(heavy)
            except ImportError:
                missing.append(heavy)
        return missing
    """)


def _paths(tree: Path, sim: Path, code: str, layers: list[str]) -> list[Path]:
    return [tree / "functions" / code] + [tree / "layers" / name / "python" for name in layers] + [sim]


def test_api_function_is_light(python312, tree, runtime_sim, tmp_path):
    """ApiFunction (code + BaseLayer): the handler, the service and the audio probe import and work;
    onnxruntime and scipy are not there and are not imported."""
    out = _run(python312, _paths(tree, runtime_sim, "api", ["base"]), MISSING_HEAVY + textwrap.dedent("""
        import io, importlib, pkgutil
        import numpy as np, soundfile as sf
        import app                                   # functions/api/app.py
        assert callable(app.lambda_handler)
        import diarizer, diarizer_service
        from diarizer import probe_audio, DiarizationOptions
        buf = io.BytesIO()
        sf.write(buf, (0.1 * np.sin(np.arange(16000) / 5)).astype("float32"), 16000, format="FLAC")
        info = probe_audio(buf.getvalue())
        from diarizer_service import page
        assert b"DiarizerTimeline" in page.web_file("timeline.js")  # the page's files are in the function zip
        service = [m.name for m in pkgutil.walk_packages(diarizer_service.__path__, "diarizer_service.")
                   if not m.name.endswith(".__main__")]
        for name in service:
            importlib.import_module(name)
        missing = missing_heavy()
        print(json.dumps({"duration": info.duration, "service": service, "missing": missing,
                          "loaded": sorted(m for m in ("onnxruntime", "scipy") if m in sys.modules)}))
        """), tmp_path)
    assert abs(out["duration"] - 1.0) < 1e-6
    assert "diarizer_service.api" in out["service"]
    assert out["missing"] == ["onnxruntime", "scipy"], "the API function must not carry the engine's dependencies"
    assert out["loaded"] == []


def test_worker_imports_every_runtime_module(python312, tree, runtime_sim, tmp_path):
    """WorkerFunction (code + Base + Runtime + Models layers): every module of both packages, the
    handler, the scipy parts the engine uses, and an onnxruntime session on each model."""
    models = tree / "layers" / "models" / "models"
    out = _run(python312, _paths(tree, runtime_sim, "worker", ["base", "runtime"]), """
        import importlib, pkgutil, os, glob
        import app                                   # functions/worker/app.py
        assert callable(app.lambda_handler)
        import diarizer, diarizer_service
        names = []
        for pkg in (diarizer, diarizer_service):
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if m.name.rsplit(".", 1)[-1] == "__main__":
                    continue  # `python -m` entry points run a CLI when imported
                importlib.import_module(m.name)
                names.append(m.name)
        import scipy.signal, scipy.cluster.hierarchy, scipy.spatial.distance, scipy.special
        from scipy.optimize import linear_sum_assignment
        import onnxruntime as ort
        sessions = {}
        for f in sorted(glob.glob(os.path.join(os.environ["DIARIZER_MODEL_DIR"], "*.onnx"))):
            s = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
            sessions[os.path.basename(f)] = [i.name for i in s.get_inputs()]
        print(json.dumps({"modules": names, "sessions": sessions, "ort": ort.__version__}))
        """, tmp_path, {"DIARIZER_MODEL_DIR": str(models)})
    assert "diarizer.pipeline" in out["modules"] and "diarizer_service.worker" in out["modules"]
    assert not any(".local_server" in m for m in out["modules"]), "local mode is not shipped to Lambda"
    assert len(out["sessions"]) >= 2, out["sessions"]


def test_sync_function_loads_the_engine(python312, tree, runtime_sim, tmp_path):
    """SyncApiFunction: the API handler code with the engine layers can build a Diarizer."""
    models = tree / "layers" / "models" / "models"
    out = _run(python312, _paths(tree, runtime_sim, "api", ["base", "runtime"]), """
        import app
        from diarizer import Diarizer
        Diarizer()
        print(json.dumps({"ok": True}))
        """, tmp_path, {"DIARIZER_MODEL_DIR": str(models)})
    assert out["ok"]


def test_worker_tree_diarizes_real_audio(python312, tree, runtime_sim, tmp_path):
    """One real diarization from the trimmed trees alone: a generated FLAC (soundfile's bundled
    libsndfile encodes and decodes it) and the bundled two-speaker demo recording."""
    models = tree / "layers" / "models" / "models"
    demo = str(DEMO) if DEMO.exists() else ""
    out = _run(python312, _paths(tree, runtime_sim, "worker", ["base", "runtime"]), f"""
        import io
        import numpy as np, soundfile as sf
        from diarizer import Diarizer, DiarizationOptions
        engine = Diarizer()
        rng = np.random.default_rng(0)
        t = np.arange(16000 * 12) / 16000
        voice = np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
        buf = io.BytesIO()
        sf.write(buf, (0.3 * voice).astype("float32"), 16000, format="FLAC")
        generated = engine.diarize(buf.getvalue(), DiarizationOptions(speakers=-1))
        result = {{"generated_duration": generated.duration, "generated": generated.to_dict()}}
        if {demo!r}:
            result["demo"] = engine.diarize({demo!r}).to_dict()
        print(json.dumps(result))
        """, tmp_path, {"DIARIZER_MODEL_DIR": str(models)})
    assert abs(out["generated_duration"] - 12.0) < 0.01
    if "demo" in out:
        assert out["demo"]["num_speakers"] == 2, out["demo"]
        assert len(out["demo"]["segments"]) >= 4


def test_trimmed_parts_are_gone(tree):
    """What build.py removes is really absent (the tests above prove nothing needed it)."""
    runtime = tree / "layers" / "runtime" / "python"
    base = tree / "layers" / "base" / "python"
    for gone in ("onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization",
                 "onnxruntime/datasets", "scipy/io", "scipy/odr", "scipy/datasets", "scipy/misc", "bin"):
        assert not (runtime / gone).exists(), gone
    assert not list((runtime / "onnxruntime" / "capi").glob("libonnxruntime.so*"))
    assert not list((base / "numpy" / "_core").glob("_simd.*"))
    for layer in (base, runtime):
        for pattern in ("**/tests", "**/__pycache__", "**/*.pyi", "**/*.pxd", "**/*.h"):
            assert not list(layer.glob(pattern)), (layer, pattern)
    for dist in ("sympy", "protobuf", "flatbuffers", "boto3", "botocore"):
        assert not list(base.glob(f"{dist}-*.dist-info")) and not list(runtime.glob(f"{dist}-*.dist-info")), dist


def test_transcoder_tree_turns_m4a_into_flac(python312, tree, runtime_sim, tmp_path):
    """TranscodeFunction (code + BaseLayer + TranscodeLayer): PyAV from the trimmed layer decodes a real M4A
    made here, and writes the 16 kHz FLAC the worker reads; no engine dependency is there."""
    sys.path.insert(0, str(REPO / "tests"))
    from media_factory import make_media

    m4a = make_media(REPO / "demo" / "two-speakers.flac", "m4a", tmp_path)
    paths = _paths(tree, runtime_sim, "transcoder", ["base", "transcode"])
    out = _run(python312, paths, MISSING_HEAVY + textwrap.dedent(f"""
        import io
        import soundfile as sf
        import app                                   # functions/transcoder/app.py
        from diarizer.audio import open_source
        from diarizer.transcode import transcode
        stream, fmt = open_source({str(m4a)!r})
        flac = io.BytesIO()
        seconds = transcode(stream, fmt, flac, out_format="FLAC")
        info = sf.info(io.BytesIO(flac.getvalue()))
        print(json.dumps({{"fmt": fmt, "seconds": seconds, "rate": info.samplerate, "channels": info.channels,
                          "format": info.format, "missing": missing_heavy()}}))
        """), tmp_path)
    assert out["fmt"] == "MP4/M4A" and out["format"] == "FLAC" and (out["rate"], out["channels"]) == (16000, 1)
    assert abs(out["seconds"] - 29.5) < 2
    assert out["missing"] == ["onnxruntime", "scipy"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_sam_makefile_targets_lay_out_code_and_models(tmp_path):
    """What `sam build` runs (layers/Makefile, from the repository root as WorkingDirectory: . says):
    the function zip has app.py and both packages at its root, the models layer has models/ at its
    root (-> /opt/models)."""
    for target, check in (
        ("build-ApiFunction", ["app.py", "diarizer/__init__.py", "diarizer_service/api.py"]),
        ("build-WorkerFunction", ["app.py", "diarizer/pipeline.py", "diarizer_service/worker.py"]),
        ("build-TranscodeFunction", ["app.py", "diarizer/transcode.py", "diarizer_service/transcoder.py"]),
        ("build-ModelsLayer", ["models/manifest.json"]),
    ):
        dest = tmp_path / target
        r = subprocess.run(["make", "--no-print-directory", "-f", "layers/Makefile", target,
                            f"ARTIFACTS_DIR={dest}", f"PYTHON={sys.executable}"],
                           cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        for rel in check:
            assert (dest / rel).is_file(), (target, rel)
        assert not list(dest.rglob("__pycache__")) and not (dest / "diarizer_service" / "local_server").exists()
    assert list((tmp_path / "build-ModelsLayer" / "models").glob("*.onnx"))
