#!/usr/bin/env bash
# Installs what `cargo test` needs beside the toolchain, pinned, skipping what is already there:
#   - systemd-analyze (the service tests), python3 and faketime (a push from a clock hours
#     off), from Debian;
#   - moto's S3 server, from PyPI (the S3 tests);
#   - s3s-fs, an S3 server over a folder with real SigV4, from crates.io (the S3 tests);
#   - Garage, a replicated S3 store, from crates.io (the cluster test; about 8 minutes to build
#     on 2 cores, once);
#   - Ceph's monitor, OSD and RADOS gateway, from Debian 12 (Ceph 16.2: the old S3 server
#     without flexible checksums, for the Content-MD5 tests; about 70 MB to download).
# Run by .ci/run and by a developer once: `scripts/test-deps.sh && cargo test`.
set -euo pipefail

MOTO_VERSION=5.2.1
S3S_FS_VERSION=0.14.1
GARAGE_VERSION=2.5.0

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v faketime >/dev/null || missing+=(faketime)
# Debian 12 (bookworm) ships Ceph 16.2, which has no flexible checksums: what the tests want.
for ceph in ceph-mon ceph-osd radosgw; do
  command -v "$ceph" >/dev/null || missing+=("$ceph")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

installed_moto=$(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || true)
if [ "$installed_moto" != "$MOTO_VERSION" ] || ! command -v moto_server >/dev/null; then
  python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
  # pyenv makes a shim for moto_server only when told to.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi

if [ "$(s3s-fs --version 2>/dev/null || true)" != "s3s-fs $S3S_FS_VERSION" ]; then
  cargo install --locked "s3s-fs@$S3S_FS_VERSION" --features binary
fi

if ! garage --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; then
  cargo install --locked "garage@$GARAGE_VERSION"
fi
