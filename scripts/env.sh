# Environment for running the project's Pulumi CLI against its local file backend. Sourced.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PATH="$TOOLS/bin:$PATH"
export PULUMI_HOME="${PULUMI_HOME:-$ROOT/.state/pulumi-home}"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$ROOT/.state/backend}"
export PULUMI_SKIP_UPDATE_CHECK=1
# Plugins come from scripts/setup (built from Go modules), never downloaded behind the user's back.
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_DIY_BACKEND_NO_LEGACY_WARNING=1
mkdir -p "$ROOT/.state/backend" "$PULUMI_HOME"

# Secrets passphrase. Only the local `dev` stack has a default; every other stack must be given one.
stack_passphrase() {
    local stack=$1
    if [ -n "${PULUMI_CONFIG_PASSPHRASE:-}" ] || [ -n "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then return 0; fi
    if [ "$stack" = dev ]; then
        export PULUMI_CONFIG_PASSPHRASE=incus-cplb-dev
    else
        die "stack $stack: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) for its secrets"
    fi
}
