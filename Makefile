# incus-cplb. Every stack target takes STACK=<name> (default dev).
# Set-up runs first wherever it is needed: it is idempotent and takes under a second when all is present.
STACK ?= dev

.PHONY: setup up preview refresh down outputs test unit bench watch

up:
	@scripts/setup
	@scripts/stack up $(STACK)

setup:
	@scripts/setup

preview: setup
	@scripts/stack preview $(STACK)

refresh: setup
	@scripts/stack refresh $(STACK)

down: setup
	@scripts/stack down $(STACK)

outputs:
	@scripts/stack outputs $(STACK)

test: setup
	@scripts/run-tests

unit:
	@.venv/bin/python -m pytest -q tests/unit

# Benchmarks print their figures and append them, dated, to docs/benchmarks.md.
bench: setup
	@.venv/bin/python bench/lxc.py --record
	@.venv/bin/python bench/ovn.py --record
	@.venv/bin/python bench/keepalived.py --record

# The dns strategy's reconcile loop: `up` when the healthy set of proxy nodes changes (Ctrl-C ends it).
watch: setup
	@. scripts/env.sh && stack_passphrase $(STACK) && .venv/bin/python scripts/watch --stack $(STACK)
