# Shared helpers for the shell scripts in scripts/. Sourced, never run.
# shellcheck shell=bash
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"
PULUMI_VERSION=3.259.0
# The real control plane, built from Go modules by scripts/setup (wrapper modules in scripts/kube-build and
# scripts/etcd-build pin these versions in their go.mod; a change there rebuilds).
KUBE_VERSION=1.37.2
ETCD_VERSION=3.7.3
KUBE_VIP_VERSION=1.2.2
# Worker nodes: the container runtime and pod network, from Go modules whose go.mod needs no wrapper (`go install`
# at these versions; the checksum database verifies them).
CONTAINERD_VERSION=2.4.2
RUNC_VERSION=1.5.3
CNI_PLUGINS_VERSION=1.10.0
# The Pulumi Kubernetes provider plugin (scripts/kubernetes-provider-build pins the commit of this release) and its
# Python SDK (requirements.txt): the same version.
KUBERNETES_PROVIDER_VERSION=4.25.0
# Project-wide Incus objects that setup creates (tests and stacks refer to them by these names).
CPLB_POOL=${CPLB_POOL:-cplb}
CPLB_BRIDGE=${CPLB_BRIDGE:-cplbbr0}
# 198.18.0.0/15 is reserved for benchmarking; .2-.99 are left free for VIPs, DHCP hands out .100-.199.
CPLB_BRIDGE_ADDR=${CPLB_BRIDGE_ADDR:-198.18.10.1/24}
# A unique-local IPv6 prefix (fd00::/8) for dual-stack balancers; instances take addresses by SLAAC.
CPLB_BRIDGE_ADDR6=${CPLB_BRIDGE_ADDR6:-fd00:198:18:10::1/64}
CPLB_DHCP_RANGE=${CPLB_DHCP_RANGE:-198.18.10.100-198.18.10.199}

# Nested Incus 7 servers (scripts/incus7-up): their own bridge, NAT off; the servers take fixed addresses below the
# DHCP range (which their instances use, through a macvlan network on each server's eth0); VIPs from .50-.99.
CPLB7_BRIDGE=${CPLB7_BRIDGE:-cplb7br0}
CPLB7_NET=${CPLB7_NET:-198.18.30}
CPLB7_STATE="$ROOT/.state/incus7"
CPLB7_REGISTRY_PORT=${CPLB7_REGISTRY_PORT:-5000}

# The Debian mirror this machine already uses, read from its own apt sources (no host name is written here).
debian_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
            /etc/apt/sources.list 2>/dev/null)
    fi
    [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources.list(.d)" >&2; return 1; }
    echo "$uri"
}

_t0() { date +%s.%N; }
_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

# step NAME CMD...: run one set-up step, print one line with its outcome and time.
# The step's output goes to a log file; on failure the tail of that log is printed.
step() {
    local name=$1; shift
    local slug t
    slug=$(printf '%s' "$name" | tr ' /' '--')
    local log="$ROOT/.build/logs/$slug.log"
    mkdir -p "$ROOT/.build/logs"
    t=$(_t0)
    # The step runs in a subshell with errexit on (inside an `if`, bash would ignore errexit).
    local rc=0
    set +e
    ( set -e; "$@" ) >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        printf '[setup] %-34s ok    %8s  %s\n' "$name" "$(_since "$t")" "$(tail -n 1 "$log" | cut -c1-60)"
    else
        printf '[setup] %-34s FAIL  %8s  (log: %s)\n' "$name" "$(_since "$t")" "$log"
        tail -n 25 "$log" | sed 's/^/    /'
        return "$rc"
    fi
}

incus_answers() { timeout 5 incus query /1.0 >/dev/null 2>&1; }

start_incusd() {
    mkdir -p /var/log/incus
    # No systemd here: start the daemon the way incus.service would, detached from this shell.
    PATH=/usr/libexec/incus:$PATH setsid nohup /usr/libexec/incus/incusd --group incus-admin \
        --logfile=/var/log/incus/incus.log >/var/log/incus/incusd.out 2>&1 < /dev/null &
    /usr/libexec/incus/incusd waitready --timeout=60
    incus_answers
    echo "incusd $(incus version | awk '/Server/ {print $3}') answering"
}

# Restart the daemon without stopping instances (SIGTERM leaves them running; SIGPWR would stop them).
restart_incusd() {
    local pid
    pid=$(pgrep -f "^/usr/libexec/incus/incusd --group" || true)
    if [ -n "$pid" ]; then
        kill -TERM $pid
        for _ in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    fi
    start_incusd
}

die() { echo "error: $*" >&2; exit 1; }
