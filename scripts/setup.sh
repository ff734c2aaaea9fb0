#!/usr/bin/env bash
# Sets up Runner Codes on Debian 12 (bookworm) or 13 (trixie), as root:
# installs QEMU, gVisor and the image tools, builds `runner`, builds the
# guest images and runs a first program. Safe to run again; it only does what is missing.
#
#   scripts/setup.sh            set up and run print(6*7) in a microVM
#   scripts/setup.sh --no-run   set up only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh installs packages and builds images: run it as root (sudo $0)" >&2
    exit 1
fi
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive

qemu_suite=()
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    # Bookworm's QEMU is 7.2; backports has 10.0, whose migration features the
    # snapshot code uses. It comes from the mirror this machine already uses
    # for bookworm, so a local mirror or proxy keeps working.
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        mirror=$(apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' |
            awk '$2 == "bookworm" { print $1; exit }')
        if [ -z "$mirror" ]; then
            echo "no bookworm entry in this machine's apt sources to take the mirror of bookworm-backports from" >&2
            exit 1
        fi
        cat > /etc/apt/sources.list.d/runner-backports.sources <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    qemu_suite=(-t bookworm-backports)
fi

apt-get update -q
# gVisor's runsc, the other backend (README "Backends"), from the same suite.
apt-get install -y -q --no-install-recommends "${qemu_suite[@]}" qemu-system-x86 runsc
# mmdebstrap builds the trixie guests (the keyring has trixie's keys);
# e2fsprogs writes ext4 images; xz unpacks kernel modules; gcc and
# libc6-dev (libc.a) link the static guest agent; python3 makes the wheel
# and npm tarball the network tests serve. The guest kernel is compiled
# from Debian's linux-source-6.12 with make, bc, bison, flex and libelf.
apt-get install -y -q --no-install-recommends \
    mmdebstrap debian-archive-keyring e2fsprogs xz-utils ca-certificates \
    gcc libc6-dev python3 python3-venv \
    linux-source-6.12 make bc bison flex libelf-dev

if ! command -v cargo >/dev/null; then
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        echo "Rust is missing and bookworm's is too old: install it with rustup (https://rustup.rs)" >&2
        exit 1
    fi
    apt-get install -y -q --no-install-recommends cargo rustc
fi

cargo build --release --locked
install -m 0755 target/release/runner /usr/local/bin/runner
runner image build
# VMs start from these instead of booting: about a minute, once per build;
# then gVisor's (under a minute). Both backends, whichever `auto` picks here:
# the tests run on both.
RUNNER_BACKEND=qemu runner snapshot create
RUNNER_BACKEND=gvisor runner snapshot create
runner doctor

if [ "${1:-}" != --no-run ]; then
    runner run --lang python -c 'print(6*7)'
fi
