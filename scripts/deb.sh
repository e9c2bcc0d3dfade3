#!/usr/bin/env bash
# Builds the Debian package: target/debian/freeway_<version>-1_<arch>.deb
#   bash scripts/deb.sh              # release build, man pages + completions, then cargo deb
#   bash scripts/deb.sh --no-build   # package the release binary already built
# Then: sudo apt install ./target/debian/freeway_*.deb   (README, "Install on a VM")
# Extra arguments go to cargo deb (e.g. --fast, --output DIR). Installs cargo-deb from
# crates.io if it is missing (about a minute of compiling on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

command -v cargo-deb >/dev/null || cargo install --locked --version '^3' cargo-deb

build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
[ $build = 1 ] && cargo build --release

target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# The man pages and completions come from the binary's own clap definition, so they always
# match what is packaged; cargo deb picks them up from target/release/package-assets.
assets=$target/release/package-assets
rm -rf "$assets"
"$target/release/freeway" package-assets "$assets"
gzip -9n "$assets"/*.1
cargo deb --no-build "$@"
