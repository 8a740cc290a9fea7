VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev,gui]'
	touch $@

run: $(VENV)/.installed
	@echo "chatter: the web page will be at http://$${CHATTER_HTTP:-127.0.0.1:8080}/ - make a token for it with: $(VENV)/bin/chatter users add NAME"
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/honcho start

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data *.egg-info

bench: $(VENV)/.installed
	$(PY) bench/run.py
