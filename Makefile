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

.PHONY: demo test venv clean bench

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF_EXTRA),test]"
	# tensorflow-serving-api declares the full `tensorflow` package; it only needs
	# protobuf and grpcio, which are installed above.
	$(BIN)/python -m pip install --quiet --no-deps "tensorflow-serving-api==2.21.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mach-tf demo --workdir demo-output --json

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info
