#!/usr/bin/env bash
# The Python tests (tests/python, clients/python/tests): a virtual
# environment from PyPI (the machine's pip configuration says where PyPI
# is) with the Python client installed from clients/python, made once under
# target/, then pytest against the runner `cargo test` built
# (target/debug/runner). The playground's tests drive Debian's Chromium,
# installed here if it is missing, so that every test runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the playground's tests need Debian's Chromium: apt install chromium (as root), or run this as root" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi

venv=target/python-venv
requirements=tests/python/requirements.txt
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi
# The runner the Rust tests ran, built if they have not run.
[ -x target/debug/runner ] || cargo build -q -p runner-cli
exec "$venv/bin/pytest" -q tests/python clients/python/tests "$@"
