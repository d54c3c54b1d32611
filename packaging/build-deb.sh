#!/usr/bin/env bash
# Builds the Debian package: the release binary, its man page and shell completions (generated
# by the binary itself), then `cargo deb`. Prints the path of the .deb last.
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
assets=target/assets
mkdir -p "$assets"
target/release/ferry manpage > "$assets/ferry.1"
target/release/ferry completions bash > "$assets/ferry.bash"
target/release/ferry completions zsh > "$assets/_ferry"
target/release/ferry completions fish > "$assets/ferry.fish"
cargo deb --no-build --strip "$@"
