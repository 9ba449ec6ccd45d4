# Set-up is automatic: the first target run creates .venv and installs graftkit into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/graft demo

test: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -n 2 -q

test-all: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -n 2 -q -m ''

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
