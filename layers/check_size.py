#!/usr/bin/env python3
"""Unzipped size of each Lambda function (its code + every layer it uses) against AWS's 250 MB limit.

    python layers/check_size.py            # builds build/lambda/ if needed (layers/build.py), then checks
    python layers/check_size.py --no-build # check an existing tree only
    python layers/check_size.py --zip      # also print the zipped size of each part

Which layers a function uses is read from template.yaml, so the check follows the template.
Exit status 1 if any function's total is >= 250 MB (AWS: function + layers, unzipped, 262,144,000
bytes), and a warning (exit 0) above the worker budget of 150 MB. Stdlib only.
"""
from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402  (layers/build.py)

AWS_LIMIT = 250 * 1024 * 1024  # 262,144,000 bytes: function + all layers, unzipped
BUDGET = 150 * 1000 * 1000  # our aim for the heaviest function
MB = 1000 * 1000

# template CodeUri folder name -> build tree part; layer logical id -> build tree part
CODE_PARTS = {"functions/api/": "functions/api", "functions/worker/": "functions/worker",
              "functions/transcoder/": "functions/transcoder"}
LAYER_PARTS = {"BaseLayer": "layers/base", "RuntimeLayer": "layers/runtime", "ModelsLayer": "layers/models",
               "TranscodeLayer": "layers/transcode"}


def template_functions(template: Path) -> dict[str, dict]:
    """{logical id: {"code": CodeUri, "layers": [layer ids]}} for every AWS::Serverless::Function.

    A small line parser (no YAML library needed): resources are two-space indented keys under
    `Resources:`, and this template writes Layers as a one-line flow list of !Ref."""
    functions: dict[str, dict] = {}
    current = None
    in_resources = False
    for line in template.read_text().splitlines():
        if re.match(r"^\S", line):
            in_resources = line.startswith("Resources:")
            current = None
            continue
        if not in_resources:
            continue
        m = re.match(r"^  ([A-Za-z0-9]+):\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current is None:
            continue
        if re.match(r"^    Type:\s*AWS::Serverless::Function\s*$", line):
            functions[current] = {"code": None, "layers": []}
        elif current in functions:
            m = re.match(r"^      CodeUri:\s*(\S+)", line)
            if m:
                functions[current]["code"] = m.group(1)
            m = re.match(r"^      Layers:\s*\[(.*)\]", line)
            if m:
                functions[current]["layers"] = re.findall(r"!Ref\s+([A-Za-z0-9]+)", m.group(1))
    return functions


def tree_size(path: Path) -> int:
    return build.dir_size(path)


def zipped_size(path: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.name != build.STAMP:
                zf.write(f, f.relative_to(path))
    return buf.tell()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=build.DEFAULT_OUT)
    ap.add_argument("--no-build", action="store_true", help="do not (re)build, check the existing tree")
    ap.add_argument("--zip", action="store_true", help="also print zipped sizes")
    ap.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    if not args.no_build:
        subprocess.run([sys.executable, str(Path(build.__file__)), "--out", str(out)], check=True)

    functions = template_functions(args.template)
    if not functions:
        print("no AWS::Serverless::Function found in", args.template, file=sys.stderr)
        return 1
    sizes: dict[str, int] = {}
    zsizes: dict[str, int] = {}
    failed = False
    for name, fn in functions.items():
        parts = [CODE_PARTS[fn["code"]]] + [LAYER_PARTS[layer] for layer in fn["layers"]]
        print(f"{name}:")
        total = 0
        for part in parts:
            path = out / part
            if not path.is_dir():
                print(f"  missing {path}: run python layers/build.py", file=sys.stderr)
                return 1
            if part not in sizes:
                sizes[part] = tree_size(path)
                if args.zip:
                    zsizes[part] = zipped_size(path)
            total += sizes[part]
            extra = f"  ({zsizes[part] / MB:6.1f} MB zipped)" if args.zip else ""
            print(f"  {part:<20} {sizes[part] / MB:7.1f} MB{extra}")
        verdict = "OK"
        if total >= AWS_LIMIT:
            verdict, failed = "FAIL: at or over the 250 MB AWS limit", True
        elif total > BUDGET:
            verdict = "OK (under 250 MB, over the 150 MB aim)"
        print(f"  {'total unzipped':<20} {total / MB:7.1f} MB  ({total / AWS_LIMIT:.0%} of 250 MiB)  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
