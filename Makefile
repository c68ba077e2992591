# incus-cplb. Every stack target takes STACK=<name> (default dev).
SHELL := /bin/bash
# Set-up runs first wherever it is needed: it is idempotent and takes under a second when all is present.
STACK ?= dev

.PHONY: setup up upgrade preview refresh down outputs test test-times unit bench watch schema validate drift preview-summary status kubeconfig

up:
	@scripts/setup
	@scripts/stack up $(STACK)

# KUBE_VIP=1: also kube-vip and cplb/control-plane-kube-vip, the image a stack that runs kube-vip on its members needs.
setup:
	@scripts/setup $(if $(KUBE_VIP),--kube-vip,)

# Roll the stack's instances to the newest version of their images, one member at a time (a rebuilt image never
# reaches a running stack by itself). `make preview UPGRADE=1` shows the rollout first.
upgrade: setup
	@scripts/stack upgrade $(STACK)

preview: setup
	@CPLB_UPGRADE=$(if $(UPGRADE),1,) scripts/stack preview $(STACK)

refresh: setup
	@scripts/stack refresh $(STACK)

down: setup
	@scripts/stack down $(STACK)

outputs:
	@scripts/stack outputs $(STACK)

# Each cluster's kubeconfig (a Pulumi secret) into .state/kubeconfig/<stack>-<cluster>, mode 0600.
kubeconfig:
	@scripts/kubeconfig $(STACK)

# The suite runs kube-vip too: set-up builds it (once) before the tests.
test:
	@scripts/setup --kube-vip
	@scripts/run-tests

# Seconds per test module and per parallel group, from the last run's JUnit report (.state/test-report.xml).
test-times:
	@.venv/bin/python scripts/test-times

unit:
	@.venv/bin/python -m pytest -q tests/unit

# Benchmarks print their figures and append them, dated, to docs/benchmarks.md.
# bench/failover.py: one harness, every strategy, the real control plane (BENCH_FLAGS=--quick for 3 runs per cell);
# then the false-failover soak that picked the recommended VRRP advert interval; bench/latency.py: the latency a
# balancer adds at a fixed request rate (vegeta, built by `scripts/setup --bench`).
bench:
	@scripts/setup --bench
	@.venv/bin/python bench/failover.py --record $(BENCH_FLAGS)
	@.venv/bin/python bench/failover.py --soak 600 --record
	@.venv/bin/python bench/watch_latency.py --record
	@.venv/bin/python bench/latency.py --record
	@.venv/bin/python bench/publish_cost.py --record
	@.venv/bin/python bench/lxc.py --record
	@.venv/bin/python bench/ovn.py --record
	@.venv/bin/python bench/keepalived.py --record
	@.venv/bin/python bench/dns_strategy.py --record
	@.venv/bin/python bench/program_cost.py --runs 1 --record

# Follow the cluster: `up` when Incus events change what a balancer serves (docs/watch.md; Ctrl-C ends it).
watch: setup
	@. scripts/env.sh && stack_passphrase $(STACK) && .venv/bin/python scripts/watch --stack $(STACK)

# Config schema (docs/config.schema.json, docs/config.md) from spec.py; `make validate` checks a stack file offline.
schema:
	@.venv/bin/python scripts/config_tools.py schema

validate:
	@.venv/bin/python scripts/config_tools.py validate $(STACK)

# Out-of-band changes and pending changes; exits non-zero with a list when the world differs from the state.
drift: setup
	@scripts/drift $(STACK)

# `pulumi preview --json` as Markdown (what the pull-request workflow posts).
preview-summary: setup
	@. scripts/env.sh && stack_passphrase $(STACK) && cd $(CURDIR) && pulumi preview --json --stack $(STACK) 2>/dev/null \
		| .venv/bin/python scripts/preview-summary - $(STACK)

# One table per balancer, read live (endpoint, VIP holders, backends with a TCP check).
status:
	@. scripts/env.sh && stack_passphrase $(STACK) && .venv/bin/python scripts/status $(STACK)
