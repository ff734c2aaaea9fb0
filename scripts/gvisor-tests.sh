#!/usr/bin/env bash
# The real-sandbox suites again on the gVisor backend (README "Backends"):
# every test of these modules runs once more with RUNNER_BACKEND=gvisor, which
# every `runner` the tests start reads. The whole test binary runs on gVisor
# with `scripts/gvisor-tests.sh --all` (tests of what only a VM has pin
# themselves to QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."

# The suites whose behaviour depends on the backend; `run::` (the CLI's own
# behaviour) and the rest run with --all.
suites=(compat:: hostile:: judge:: limits:: sessions:: network:: api:: interactive::)
if [ "${1:-}" = --all ]; then
    suites=()
fi
RUNNER_BACKEND=gvisor cargo test --locked -p runner-cli --test vm -- "${suites[@]}"
