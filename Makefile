# musicfs: every target sets up what it needs; nothing is installed by hand.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# systemd: for systemd-analyze, which checks the service unit (installing it starts nothing)
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev ffmpeg fio tree openssh-server openssh-client systemd
SAMPLE ?= build/sample-library
MNT ?= mnt
STATE ?= build/state

.PHONY: setup system-deps run stop test conformance chaos perf perf-compare soak lint clean sample report

setup: system-deps $(STAMP)

# the Debian packages named in $(1) that are missing, installed with apt-get (sudo unless root)
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

system-deps:
	$(call apt_install,$(APT_PACKAGES))

$(STAMP): pyproject.toml setup.py musicfs/fuse/_replyopen.c musicfs/store/_fastcdc.c
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: the checkout on sys.path through a .pth line; the default editable mode installs an
	# import hook that every Python process (each CLI command) spends ~20 ms loading (CLI-1)
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $(STAMP)

sample: setup
	$(PY) -m fixtures.generate --size ci --out $(SAMPLE)

run: sample
	@mkdir -p $(MNT) $(STATE)
	$(VENV)/bin/musicfs --state-dir $(STATE) mount --origin $(SAMPLE)/library $(MNT)
	@echo
	@echo "musicfs is mounted at $(MNT)/   browse it:  ls $(MNT)   tree $(MNT)"
	@echo "unmount with:  make stop   (or: $(VENV)/bin/musicfs --state-dir $(STATE) umount $(MNT))"

stop: setup
	$(VENV)/bin/musicfs --state-dir $(STATE) umount $(MNT)

# every suite, perf at its CI size, in two sessions. First the tests that may share the machine,
# TEST_WORKERS side by side (pytest-xdist; a module's tests stay on one worker, so its fixtures are
# built once); then the ones marked `alone` (chaos, perf, and conformance tests that measure time,
# speed or memory or empty the kernel's caches), one at a time. The second judges the catalogue
# on both; --req-complete fails the run if a requirement that is not `planned` in
# spec/requirements.toml ends without a passing check at its suite's level.
TEST_WORKERS ?= 4
TESTS := tests conformance chaos perf examples
test: setup
	@rm -f build/side-by-side.json
	@$(PY) -m pytest $(TESTS) -q -m "not slow and not alone" -n $(TEST_WORKERS) --dist loadfile \
	  --req-save build/side-by-side.json --durations=10; first=$$?; \
	$(PY) -m pytest $(TESTS) -q -m "not slow and alone" --req-complete \
	  --req-merge build/side-by-side.json --durations=15; second=$$?; \
	if [ $$first -ne 0 ]; then echo "make test: the side-by-side session failed (exit $$first)"; exit $$first; fi; \
	exit $$second

# the suites on their own write reports of their own: build/requirements-report.json stays the
# last whole run's (make test); a bare pytest run without --req-complete writes build/partial-report.json
conformance: setup
	$(PY) -m pytest conformance -q --req-report build/conformance-report.json

chaos: setup
	$(PY) -m pytest chaos -q --req-report build/chaos-report.json

perf: setup
	$(PY) -m pytest perf -q -s --perf-size full --req-report build/perf-report.json

# musicfs against bindfs and rclone mount over the same library, interleaved rounds (issue 18);
# the figures also go to build/perf-compare.json
PEER_PACKAGES := bindfs rclone
perf-compare: setup
	$(call apt_install,$(PEER_PACKAGES))
	$(PY) -m perf.compare --size full --rounds 3

# a JSON requirement report as one self-contained HTML page (REPORT=build/perf-report.json: make perf's)
REPORT ?= build/requirements-report.json
report: setup
	$(PY) -m spec.html $(REPORT) -o $(REPORT:.json=.html)

# MM-6: an hour of mixed reads, walks, rescans and origin faults, judged for drift (make test runs
# 100 s of it); MUSICFS_SOAK_SECONDS=86400 make soak is seed 001's full 24 h
soak: setup
	MUSICFS_SOAK_SECONDS=$${MUSICFS_SOAK_SECONDS:-3600} $(PY) -m pytest chaos/test_mm6_soak.py -q -s \
	  --req-report build/soak-report.json

lint: setup
	$(VENV)/bin/ruff check musicfs spec fixtures tests conformance chaos perf examples

clean:
	rm -rf build .pytest_cache
