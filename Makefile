# pgbackup: one command for each thing a developer or CI does. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the unit tests judge with: pgBackRest's option parser, systemd-analyze, promtool, GitHub's
# Markdown renderer (the README's generated tables), a PostgreSQL server (the drill's settings read by `postgres -C`).
TEST_DEBS := pgbackrest systemd prometheus shellcheck cmark-gfm postgresql
# ... and what the lab runs on the host (nodes get theirs inside the image).
LAB_DEBS := debootstrap systemd-container etcd-server etcd-client patroni python3-etcd nginx openssl \
            openssh-client curl jq util-linux procps ca-certificates python3-venv iproute2
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q

.PHONY: setup setup-lab test lint unit mutants reference lab lab-test lab-down lab-bench bench help
help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The operator's command (README): runs pgbackup_cli from the repository this venv lives in (.venv in it).
$(VENV)/bin/pgbackup: $(VENV)/.installed
	printf '%s\n' '#!/bin/sh' '# pgbackup: the operator'"'"'s command (README), written by make setup.' \
	  'repo=$$(cd "$$(dirname "$$0")/../.." && pwd)' \
	  'PYTHONPATH="$$repo$${PYTHONPATH:+:$$PYTHONPATH}" exec "$$(dirname "$$0")/python" -m pgbackup_cli "$$@"' >$@
	chmod 0755 $@

setup: $(VENV)/.installed $(VENV)/bin/pgbackup ## Debian packages, the venv for the program and its unit tests, the pgbackup command
	@missing=$$(for p in $(TEST_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then $(APT) update >/dev/null && $(APT) install --no-install-recommends $$missing >/dev/null; fi

setup-lab: setup ## ... and the Debian packages the lab needs on the host
	@missing=$$(for p in $(LAB_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then $(APT) update >/dev/null && $(APT) install --no-install-recommends $$missing >/dev/null; fi

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	cd examples/consumer && MYPYPATH=../.. $(abspath $(VENV))/bin/mypy --config-file ../../pyproject.toml __main__.py test_consumer.py

unit: setup ## the fast suite: everything but the lab (on every core: pytest-xdist)
	$(PY) -m pytest -m "not lab" -q -n auto

test: setup ## lint, types and the fast suite (the README's test command): both at once, each one's output whole
	$(MAKE) --no-print-directory -j2 --output-sync=target lint unit

mutants: setup ## break the node programs and key policies one way at a time (tests/mutants.toml): the fast suite must fail on each
	$(PY) tools/mutants.py

reference: setup ## rewrite the configuration reference (docs/configuration.md tables, Pulumi.yaml comments) from components/config.py
	$(PY) -m components.reference

lab: setup-lab ## build and boot the lab, apply the program to it, print the stack outputs (YAML)
	lab/up.sh
	$(PY) -m lab.driver up

LAB_TESTS ?= lab
lab-test: setup-lab ## the end-to-end tests against the lab (root; builds and tears down the lab; LAB_TESTS: a -m expression)
	$(PY) -m pytest -m "$(LAB_TESTS)" -q --durations=20 --durations-min=30

lab-down: ## stop the lab (keeps the cached node image)
	lab/down.sh

bench: setup ## evaluation time, steps per node and dependency depth for 3, 20 and 100 nodes
	$(PY) benchmarks/steps.py

lab-bench: setup-lab ## both lab releases side by side: deploy, RPO, full and incremental backup, restore, PITR RTO
	$(PY) -m lab.bench
