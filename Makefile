# The two commands of the README: `make run` and `make test`. Both create .venv and
# install the project into it first (nothing needs to be installed by hand).
PYTHON ?= python3
VENV ?= .venv
ARGS ?= --ticks 15
PYTEST_ARGS ?=
# both cores: tests spread over two workers; a worker that runs out takes queued tests from
# the other (worksteal), so a long file handed out late does not leave one core idle at the
# end (with loadfile one worker ran 108 s alone after the other had finished)
PYTEST_WORKERS ?= -n 2 --dist worksteal

.PHONY: run test bench install clean

run: $(VENV)/.installed
	$(VENV)/bin/wyneos run $(ARGS)

test: $(VENV)/.installed
	bash scripts/test-deps.sh
	$(VENV)/bin/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/run_all.py

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .wyneos .pytest_cache
