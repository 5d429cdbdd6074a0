# One entry point for people and CI. `make demo` and `make test` work on a fresh clone
# (Python 3.11+, network to PyPI); everything lands in .venv/ inside the repository.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test unit lint size build bench bench-accuracy bench-speed clean

$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -r requirements/dev.txt
	# The official DeepAffects SDK pins grpcio/protobuf versions that do not build on Python 3.11;
	# its diarization client never imports them (see tests/acceptance).
	$(BIN)/pip install --quiet --no-deps deepaffects==1.4.1
	touch $(STAMP)

setup: $(STAMP)

## demo: install, start the local service, diarize the bundled recording, print the speakers
demo: $(STAMP)
	$(BIN)/python demo/run_demo.py

## test: install and run every test, the template lint and the Lambda size check
test: $(STAMP)
	$(MAKE) --no-print-directory lint size
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/cfn-lint template.yaml

size: $(STAMP)
	$(BIN)/python layers/build.py --check-size

build: $(STAMP)
	$(BIN)/python layers/build.py

## bench: accuracy (needs ../shared/eval) and speed/memory figures for BENCHMARKS.md
bench: bench-accuracy bench-speed

bench-accuracy: $(STAMP)
	$(BIN)/python bench/accuracy.py --set ami --set dev

bench-speed: $(STAMP)
	$(BIN)/python bench/speed.py

clean:
	rm -rf build .aws-sam .bench
