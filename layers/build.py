#!/usr/bin/env python3
"""Build the Lambda code and layer trees (stdlib only; runs with any Python 3.9+ that has pip).

One build, two ways to call it:

* ``sam build`` (no Docker needed): every function and layer in template.yaml has
  ``Metadata: BuildMethod: makefile`` and ``layers/Makefile`` calls
  ``python3 layers/build.py --target <LogicalId> --dest $(ARTIFACTS_DIR)``.
* Stand-alone (tests, size check, CI)::

      python layers/build.py                  # everything into build/lambda/
      python layers/build.py --only base runtime
      python layers/build.py --check-size     # build, then layers/check_size.py (exit 1 at >= 250 MB)
      DIARIZER_ARCH=arm64 python layers/build.py --out build/lambda-arm64

Stand-alone output (what a function sees at run time in brackets)::

    build/lambda/functions/api/       app.py + diarizer/ + diarizer_service/   [/var/task]
    build/lambda/functions/worker/    app.py + diarizer/ + diarizer_service/   [/var/task]
    build/lambda/layers/base/python/     powertools, soundfile, numpy, ...     [/opt/python]
    build/lambda/layers/runtime/python/  scipy, onnxruntime                    [/opt/python]
    build/lambda/layers/models/models/   *.onnx, manifest.json, LICENSES/      [/opt/models]

Wheels are taken for the Lambda runtime, not for this machine: CPython 3.12 (Lambda ``python3.12``,
Amazon Linux 2023, glibc 2.34), platform ``manylinux_2_28`` or older, x86_64 or aarch64, binary only,
``--no-deps`` (the requirements files are the full, pinned closure). Then the trees are trimmed; every
rule below says why it is safe, and tests/unit/test_layer_imports.py imports everything from the
trimmed trees alone and runs a real diarization.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS_DIR = ROOT / "layers"
DEFAULT_OUT = ROOT / "build" / "lambda"

PYTHON_VERSION = "3.12"  # Lambda runtime python3.12 (template.yaml Globals.Function.Runtime)
PLATFORMS = {
    # manylinux_2_28 first (onnxruntime >= 1.17 ships only that), manylinux2014 for the rest.
    "x86_64": ["manylinux_2_28_x86_64", "manylinux2014_x86_64"],
    "arm64": ["manylinux_2_28_aarch64", "manylinux2014_aarch64"],
}
PIP_LAYERS = {"base": LAYERS_DIR / "base" / "requirements.txt", "runtime": LAYERS_DIR / "runtime" / "requirements.txt",
              "transcode": LAYERS_DIR / "transcode" / "requirements.txt"}

# Function code: the handler folder plus the two packages it imports, side by side at /var/task.
FUNCTIONS = {"api": ROOT / "functions" / "api", "worker": ROOT / "functions" / "worker",
             "transcoder": ROOT / "functions" / "transcoder"}
CODE_PACKAGES = [ROOT / "src" / "diarizer", ROOT / "src" / "diarizer_service"]
# Local mode only (`diarize serve`: HTTP gateway, worker loop, its OpenAPI page): never runs in Lambda,
# and nothing outside it imports it.
CODE_EXCLUDES = ("local_server", "openapi.json")
MODELS_SRC = ROOT / "models"
# What goes into the models layer: the ONNX files, their manifest and their licences; not export.py.
MODEL_PATTERNS = ("*.onnx", "manifest.json", "LICENSES")

# SAM logical id -> (kind, name). SyncApiFunction runs the same handler code as ApiFunction.
SAM_TARGETS = {
    "ApiFunction": ("function", "api"),
    "SyncApiFunction": ("function", "api"),
    "WorkerFunction": ("function", "worker"),
    "DeadLetterFunction": ("function", "worker"),  # the worker code's dead_letter_handler, no engine
    "TranscodeFunction": ("function", "transcoder"),
    "BaseLayer": ("pip", "base"),
    "RuntimeLayer": ("pip", "runtime"),
    "ModelsLayer": ("models", "models"),
    "TranscodeLayer": ("pip", "transcode"),
}

# The scipy entry points the engine uses. Any scipy subpackage not reachable from these through a
# static import scan is removed (see _trim_scipy).
SCIPY_ROOTS = ("signal", "cluster", "spatial", "optimize", "special")

# Always removed from pip layers (never executed at run time).
DROP_DIR_NAMES = {"__pycache__", "tests", "include"}
DROP_FILE_NAMES = {"conftest.py"}  # pytest configuration
DROP_FILE_SUFFIXES = (".pyc", ".pyo", ".pyi", ".pxd", ".pyx", ".h", ".hpp", ".c", ".cpp")
# Package-specific removals, relative to the layer's python/ folder. Each is proven unused by
# tests/unit/test_layer_imports.py (imports + real inference from the trimmed tree).
DROP_PATHS = [
    "bin",  # console scripts (f2py, numpy-config, ...) of the build machine
    "wrapt-stubs",  # type stubs
    # NOT numpy/f2py: scipy's array_api_compat runs `from numpy import *`, which imports it.
    "numpy/_core/_simd.cpython-*",  # SIMD intrinsics test harness, imported by numpy's tests only
    # Swagger UI assets: only served by the resolver's enable_swagger(), which the API does not call.
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/*.js",
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/*.css",
    "onnxruntime/tools",  # model conversion/optimisation tools (need onnx, protobuf)
    "onnxruntime/transformers",  # transformer graph optimisers (need onnx, sympy)
    "onnxruntime/quantization",  # quantisation tools (need onnx)
    "onnxruntime/datasets",  # sample models
    "onnxruntime/backend",  # ONNX backend-test API (needs the onnx package)
    # The C-API shared library (35 MB): the Python binding onnxruntime_pybind11_state*.so links
    # ORT statically and does not load it (readelf -d: no NEEDED libonnxruntime.so.1).
    "onnxruntime/capi/libonnxruntime.so.*",
    # GPU/accelerator execution providers (absent from the CPU wheel; listed in case a wheel has them).
    # libonnxruntime_providers_shared.so stays: it is tiny and the binding may dlopen it.
    "onnxruntime/capi/libonnxruntime_providers_cuda*",
    "onnxruntime/capi/libonnxruntime_providers_tensorrt*",
    "onnxruntime/capi/libonnxruntime_providers_rocm*",
    "onnxruntime/capi/libonnxruntime_providers_migraphx*",
    "onnxruntime/capi/libonnxruntime_providers_openvino*",
]

STAMP = ".build-stamp.json"


def log(msg: str) -> None:
    print(f"[layers/build.py] {msg}", file=sys.stderr, flush=True)


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                total += p.stat().st_size
    return total


# ---------------------------------------------------------------------------------------------- pip
def pip_install(requirements: Path, target: Path, arch: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-compile",
           "--disable-pip-version-check", "--no-warn-script-location", "--quiet",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--target", str(target),
           "-r", str(requirements)]
    for plat in PLATFORMS[arch]:
        cmd[4:4] = ["--platform", plat]
    log(f"pip install -r {requirements.relative_to(ROOT)} ({arch}, cp{PYTHON_VERSION.replace('.', '')})")
    subprocess.run(cmd, check=True)


def _rm(path: Path) -> int:
    if not path.exists() and not path.is_symlink():
        return 0
    size = dir_size(path) if path.is_dir() else path.stat().st_size
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return size


def trim(site: Path, arch: str) -> dict:
    """Remove what never runs. Returns {rule: bytes removed}."""
    removed: dict[str, int] = {}

    def add(rule: str, n: int) -> None:
        removed[rule] = removed.get(rule, 0) + n

    # Test suites, caches, stubs, C/Cython sources and headers first (so that the scipy scan below
    # does not follow what only a test imports).
    for dirpath, dirs, files in os.walk(site, topdown=True):
        for d in list(dirs):
            if d in DROP_DIR_NAMES:
                add(f"*/{d}/", _rm(Path(dirpath, d)))
                dirs.remove(d)
        for f in files:
            if f in DROP_FILE_NAMES:
                add(f, _rm(Path(dirpath, f)))
            elif f.endswith(DROP_FILE_SUFFIXES):
                add("*" + Path(f).suffix, _rm(Path(dirpath, f)))
    for pattern in DROP_PATHS:
        for p in sorted(site.glob(pattern)):
            add(pattern, _rm(p))
    scipy_dir = site / "scipy"
    if scipy_dir.is_dir():
        for name, n in _trim_scipy(scipy_dir).items():
            add(f"scipy/{name} (not reachable from scipy.{{{','.join(SCIPY_ROOTS)}}})", n)
    add("strip --strip-unneeded (extension modules)", _strip(site, arch))
    return removed


def _strip(site: Path, arch: str) -> int:
    """strip --strip-unneeded the extension modules the wheels ship unstripped.

    Not the bundled libraries in `<pkg>.libs/` or `_soundfile_data/`: auditwheel rewrote those with
    patchelf, and strip corrupts them ("ELF load command address/offset not page-aligned" on
    numpy.libs/libscipy_openblas64_*.so, seen here). Only when this machine's strip knows the arch.
    """
    strip = shutil.which("strip")
    host = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if not strip or host != arch:
        log("strip skipped (no strip, or cross-arch build)")
        return 0
    saved = 0
    for p in site.rglob("*.so*"):
        rel = p.relative_to(site).parts
        if p.is_symlink() or not p.is_file() or rel[0].endswith(".libs") or rel[0] == "_soundfile_data":
            continue
        before = p.stat().st_size
        r = subprocess.run([strip, "--strip-unneeded", str(p)], capture_output=True)
        if r.returncode == 0:
            saved += before - p.stat().st_size
    return saved


_ABS = re.compile(rb"scipy\.([A-Za-z_][A-Za-z0-9_]*)")


def _py_refs(f: Path, scipy_dir: Path) -> set[str]:
    """scipy subpackage names a .py file can import: every import statement (top level or inside a
    function: lazy imports count), resolved relative imports, and any non-docstring string constant
    that mentions scipy.<name> (importlib.import_module, __module__ names, ...). Docstrings are
    skipped: their `>>> from scipy import datasets` examples never run."""
    text = f.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(text)
    except SyntaxError:  # newer syntax than this interpreter: fall back to "any mention"
        return {m.decode() for m in _ABS.findall(text.encode())}
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    pkg = ["scipy", *f.relative_to(scipy_dir).parts[:-1]]
    refs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "scipy" and len(parts) > 1:
                    refs.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if parts[0] != "scipy":
                continue
            if len(parts) > 1:
                refs.add(parts[1])
            else:  # from scipy import a, b
                refs.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            refs.update(m.decode() for m in _ABS.findall(node.value.encode()))
    return refs


def _scipy_refs(files: list[Path], scipy_dir: Path, subpackages: set[str]) -> set[str]:
    """Every scipy subpackage these files can import. Compiled modules: any mention of scipy.<name>
    in the binary (over-approximation, safe)."""
    refs: set[str] = set()
    for f in files:
        if f.suffix == ".py":
            refs |= _py_refs(f, scipy_dir)
        elif f.suffix == ".so" or ".so." in f.name:
            refs.update(m.decode() for m in _ABS.findall(f.read_bytes()))
    return refs & subpackages


def _trim_scipy(scipy_dir: Path) -> dict:
    """Remove scipy subpackages that no kept code can import (static closure, then proven by test)."""
    subpackages = {p.name for p in scipy_dir.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    # Roots: the engine's entry points, scipy's private helpers (_lib, ...) and scipy's top-level
    # modules except __init__.py (which names every subpackage, for lazy loading on attribute access).
    todo = list(SCIPY_ROOTS) + sorted(s for s in subpackages if s.startswith("_"))
    top_files = [f for f in scipy_dir.iterdir() if f.is_file() and f.name != "__init__.py"]
    todo += sorted(_scipy_refs(top_files, scipy_dir, subpackages))
    keep: set[str] = set()
    while todo:
        s = todo.pop()
        if s in keep:
            continue
        keep.add(s)
        files = [f for f in (scipy_dir / s).rglob("*") if f.is_file()]
        todo.extend(sorted(_scipy_refs(files, scipy_dir, subpackages) - keep))
    removed = {}
    for s in sorted(subpackages - keep):
        removed[s] = _rm(scipy_dir / s)
    log(f"scipy: kept {sorted(keep)}; removed {sorted(removed)}")
    return removed


def build_pip_layer(name: str, dest: Path, arch: str, use_stamp: bool) -> dict:
    """dest/python/<packages>: the layer's content root (Lambda puts /opt/python on sys.path)."""
    req = PIP_LAYERS[name]
    stamp_key = {
        "requirements": req.read_text(),
        "build.py": Path(__file__).read_text(),
        "arch": arch,
        "python": PYTHON_VERSION,
    }
    digest = hashlib.sha256(json.dumps(stamp_key, sort_keys=True).encode()).hexdigest()
    stamp = dest / STAMP
    if use_stamp and stamp.exists():
        old = json.loads(stamp.read_text())
        if old.get("digest") == digest:
            log(f"{name}: up to date ({dest})")
            return old.get("removed", {})
    if dest.exists():
        shutil.rmtree(dest)
    site = dest / "python"
    site.mkdir(parents=True)
    pip_install(req, site, arch)
    before = dir_size(site)
    removed = trim(site, arch)
    after = dir_size(site)
    log(f"{name}: {before / 1e6:.1f} MB installed -> {after / 1e6:.1f} MB after trimming")
    if use_stamp:
        stamp.write_text(json.dumps({"digest": digest, "removed": removed, "installed_bytes": before}, indent=1))
    return removed


# ------------------------------------------------------------------------------------ code, models
def _copy_tree(src: Path, dst: Path, *extra_ignores: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "tests", *extra_ignores)
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)


def build_function(name: str, dest: Path) -> None:
    src = FUNCTIONS[name]
    if not (src / "app.py").exists():
        raise SystemExit(f"{src.relative_to(ROOT)}/app.py does not exist yet")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _copy_tree(src, dest)
    for req in dest.glob("requirements*.txt"):
        req.unlink()  # dependencies come from the layers
    for pkg in CODE_PACKAGES:
        if pkg.is_dir():
            _copy_tree(pkg, dest / pkg.name, *CODE_EXCLUDES)
        else:
            log(f"warning: {pkg.relative_to(ROOT)} missing")


def build_models(dest: Path) -> None:
    """dest/models/: the layer content root, so the files land in /opt/models (DIARIZER_MODEL_DIR)."""
    if dest.exists():
        shutil.rmtree(dest)
    out = dest / "models"
    out.mkdir(parents=True)
    found = 0
    for pattern in MODEL_PATTERNS:
        for p in sorted(MODELS_SRC.glob(pattern)):
            if p.is_dir():
                shutil.copytree(p, out / p.name)
            else:
                shutil.copy2(p, out / p.name)
            found += 1
    if not list(out.glob("*.onnx")):
        log("warning: no models/*.onnx found: the models layer is empty")


# ---------------------------------------------------------------------------------------------- cli
def build_all(out: Path, arch: str, only: list[str]) -> None:
    for what in only:
        if what in PIP_LAYERS:
            build_pip_layer(what, out / "layers" / what, arch, use_stamp=True)
        elif what == "models":
            build_models(out / "layers" / "models")
        elif what in FUNCTIONS:
            build_function(what, out / "functions" / what)
        else:
            raise SystemExit(f"unknown part {what!r}")
    (out / "build-info.json").write_text(json.dumps({"arch": arch, "python": PYTHON_VERSION}, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default=os.environ.get("DIARIZER_ARCH", "x86_64"), choices=sorted(PLATFORMS),
                    help="Lambda architecture (default: $DIARIZER_ARCH or x86_64)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="stand-alone output folder (default build/lambda)")
    ap.add_argument("--only", nargs="+", default=["base", "runtime", "models", "transcode", "api", "worker", "transcoder"],
                    help="parts to build: base runtime models transcode api worker transcoder")
    ap.add_argument("--check-size", action="store_true",
                    help="after building, run layers/check_size.py on the tree (exit 1 at >= 250 MB)")
    ap.add_argument("--target", choices=sorted(SAM_TARGETS), help="SAM logical id (with --dest): used by layers/Makefile")
    ap.add_argument("--dest", type=Path, help="SAM's $(ARTIFACTS_DIR) for --target")
    args = ap.parse_args(argv)

    if args.target:
        if not args.dest:
            ap.error("--target needs --dest")
        kind, name = SAM_TARGETS[args.target]
        dest = args.dest.resolve()
        if kind == "function":
            build_function(name, dest)
        elif kind == "models":
            build_models(dest)
        else:
            # SAM hands an empty artifacts dir; build in a scratch sub-folder then move the content up.
            tmp = dest / ".layer-build"
            build_pip_layer(name, tmp, args.arch, use_stamp=False)
            shutil.move(str(tmp / "python"), str(dest / "python"))
            shutil.rmtree(tmp)
        return 0
    build_all(args.out.resolve(), args.arch, args.only)
    if args.check_size:
        sys.path.insert(0, str(LAYERS_DIR))
        import check_size

        return check_size.main(["--no-build", "--out", str(args.out.resolve())])
    return 0


if __name__ == "__main__":
    sys.exit(main())
