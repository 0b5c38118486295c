# Two entry points for a fresh machine: `make demo` (whole pipeline on the sample data) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip prints one harmless warning per package for this machine's file:// index mirrors; hide only those.
# The braces keep grep's "nothing left to print" from masking pip's own exit status (pipefail is on).
QUIET_PIP := { grep -v "^WARNING: Location 'file://" || true; }
UI_HOME ?= $(CURDIR)/var/dagster_home
# Label Studio and its label-studio-sdk pin numpy < 2.3, which clashes with ours: they get their own venv,
# used by `finetune review` (review.label_studio_python) and the Label Studio tests.
LS_VENV ?= var/label-studio/venv
LS_STAMP := $(LS_VENV)/.installed-stamp
LABEL_STUDIO_PIN := label-studio==1.23.2

.PHONY: install demo test lint ui clean system-deps label-studio

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned to the CPU wheel on disk; the constraint keeps later installs from replacing it.
	$(PY) -m pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[dev]' -c constraints.txt 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, transformers, peft, bitsandbytes, dagster, presidio_analyzer"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/finetune run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The UI browser tests drive Debian's Chromium (see ../shared/ENV_NOTES.md) and the storage test starts
# Debian's PostgreSQL; install them when we can (root with apt), otherwise those tests skip and say why.
system-deps:
	@{ command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq chromium postgresql; } >/dev/null 2>&1; } || \
		echo "could not install chromium/postgresql: the browser and PostgreSQL tests will be skipped"
	@# CJK fonts, so Chinese text in the Label Studio screenshots is readable rather than boxes.
	@{ fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq fonts-noto-cjk; } >/dev/null 2>&1; } || \
		echo "could not install fonts-noto-cjk: Chinese text in browser screenshots will not render"

# A failed install only skips the Label Studio tests (they say why); the next make retries it.
$(LS_STAMP):
	@mkdir -p $(dir $(LS_VENV))
	@{ test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV); } && \
		$(LS_VENV)/bin/python -m pip install -q $(LABEL_STUDIO_PIN) 2>&1 | $(QUIET_PIP) && \
		$(LS_VENV)/bin/python -c "import label_studio, label_studio_sdk" && touch $@ || \
		echo "could not install $(LABEL_STUDIO_PIN) into $(LS_VENV): the Label Studio tests will be skipped"

label-studio: $(LS_STAMP)

# pytest exits 5 when it collected nothing; that is not a failure of the code under test.
test: lint system-deps label-studio
	$(PY) -m pytest -q -rs; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

ui: install
	mkdir -p $(UI_HOME)
	test -f $(UI_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(UI_HOME)/dagster.yaml
	DAGSTER_HOME=$(UI_HOME) $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf var .pytest_cache
