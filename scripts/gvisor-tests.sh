#!/usr/bin/env bash
# The real-sandbox suites again on the gVisor backend (README "Backends"):
# every test of these modules runs once more with RUNNER_BACKEND=gvisor, which
# every `runner` the tests start reads. The whole test binary runs on gVisor
# with `scripts/gvisor-tests.sh --all` (tests of what only a VM has pin
# themselves to QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."

# The suites whose behaviour depends on the backend, and of the API's (the
# server's own, the same on both) two that take every language and many
# requests through it; everything, with --all. CI runs this subset to stay
# within its time.
suites=(compat:: hostile:: judge:: limits:: sessions:: network:: interactive::
    api::every_language_over_http api::twenty_requests_at_once)
if [ "${1:-}" = --all ]; then
    suites=()
fi
RUNNER_BACKEND=gvisor cargo test --locked -p runner-cli --test vm -- "${suites[@]}"
