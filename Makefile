# The two commands a user types first: `make demo` and `make test`. Both install what they
# need (Debian packages through scripts/install-deps, Python ones into .venv from the lock).
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-stop test unit integration bench lint deps venv clean deb deb-test

demo: deps
	$(PY) scripts/demo.py $(if $(KEEP),--keep)

demo-stop: venv
	$(PY) scripts/demo.py --stop

test: deps
	$(PY) -m pytest -m "not packaging" $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: deps
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

bench: deps
	$(PY) bench/run.py

# Debian packages (README "Packaging"): every binary package into build/deb/, then lintian,
# the units and the apt install/upgrade/remove/purge life in a debootstrap chroot (root).
deb: deps
	debian/build-debs build/deb

deb-test: deb
	MEDULLA_DEB_DIR=$(CURDIR)/build/deb $(PY) -m pytest tests/packaging $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check medulla_appliance agent tests scripts bench

deps: venv
	scripts/install-deps

venv: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $$(grep -E "^wheel==" requirements.lock)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
