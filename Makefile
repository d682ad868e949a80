# One entry point for people and CI. `make setup` is idempotent: a stamp file records what was installed,
# so a second `make test` reinstalls nothing unless pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := tesseract-ocr libzbar0 fonts-dejavu-core chromium fonts-dejavu-extra fonts-urw-base35 fonts-noto-mono
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1

.PHONY: setup system-deps test test-fast demo lint format

setup: system-deps $(STAMP)

# Detectors need tesseract and zbar from Debian, the report test chromium. Installs only the packages dpkg does not
# list as installed, says which before asking for sudo, and needs no apt at all when every one is there.
system-deps:
	@if ! command -v dpkg-query >/dev/null; then \
	  echo "not a Debian system: install the equivalents of $(APT_PACKAGES) yourself"; exit 0; fi; \
	missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages with apt-get:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m erasure.toy.demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
