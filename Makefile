# Two entry points, each sets up everything it needs on a fresh machine:
#   make demo   - the whole pipeline end to end on built-in synthetic data
#   make test   - the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# GPU users: make TF_EXTRA=gpu demo   (installs tensorflow[and-cuda] instead of tensorflow-cpu)
TF_EXTRA ?= cpu
PYTEST_ARGS ?=
# Test processes (pytest-xdist; each takes whole test files): one per core by default,
# PYTEST_WORKERS=0 runs the suite in this process.
PYTEST_WORKERS ?= auto

.PHONY: demo test venv clean bench bench-peers

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF_EXTRA),test]"
	# For the tests (hand-written warmup records against the real protos) and gRPC clients;
	# mach-tf itself runs without it. It declares the full `tensorflow` package; it only
	# needs protobuf and grpcio, which are installed above.
	$(BIN)/python -m pip install --quiet --no-deps "tensorflow-serving-api==2.21.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mach-tf demo --workdir demo-output --json

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The peers of benchmarks.time_to_accuracy (Omikuji, napkinXC, PECOS XR-Linear) in their
# own environment: PECOS pins numpy<2, which TensorFlow 2.21 cannot use. XR-Linear needs
# only numpy, scipy and scikit-learn, not the torch stack libpecos declares for its
# transformer models.
PEERS_VENV := .venv-peers
bench-peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet "numpy<2" "scipy<1.14" scikit-learn \
		omikuji napkinxc
	$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps libpecos
	touch $@

clean:
	rm -rf $(VENV) $(PEERS_VENV) demo-output .pytest_cache build *.egg-info
