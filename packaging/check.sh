#!/usr/bin/env bash
# Checks the packaging as a user meets it, on this (Debian) machine: builds the .deb, checks its
# contents, installs it with dpkg, verifies the installed systemd units, runs the binary, then
# removes and purges the package and checks it left nothing behind. Needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
fail() { echo "packaging check failed: $*" >&2; exit 1; }

deb=$(packaging/build-deb.sh | tail -n 1)
[ -f "$deb" ] || fail "no package at '$deb'"
echo "built $deb"

contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/ferry \
            ./usr/lib/systemd/system/ferry.service \
            ./usr/lib/systemd/user/ferry.service \
            ./etc/ferry/config.toml \
            ./usr/share/man/man1/ferry.1.gz \
            ./usr/share/bash-completion/completions/ferry \
            ./usr/share/zsh/vendor-completions/_ferry \
            ./usr/share/fish/vendor_completions.d/ferry.fish; do
  grep -q " $path\$" <<<"$contents" || fail "$path is not in the package"
done
echo "contents: binary, units, example config, man page and completions"
# HTTPS remotes need the system's CA certificates; the package says so to apt.
[ "$(dpkg-deb -f "$deb" Recommends)" = "ca-certificates" ] || fail "the package does not recommend ca-certificates"

if dpkg -s ferry >/dev/null 2>&1; then $sudo dpkg --purge ferry; fi
$sudo dpkg -i "$deb"
ferry --version
getent passwd ferry >/dev/null || fail "the ferry system user was not created"
man -w ferry >/dev/null || fail "man cannot find ferry(1)"
systemd-analyze verify /usr/lib/systemd/system/ferry.service
XDG_RUNTIME_DIR=$(mktemp -d) systemd-analyze --user verify /usr/lib/systemd/user/ferry.service
echo "installed units pass systemd-analyze verify"

$sudo dpkg --remove ferry
[ ! -e /usr/bin/ferry ] || fail "/usr/bin/ferry is still there after remove"
[ -e /etc/ferry/config.toml ] || fail "remove (not purge) must keep the configuration"
$sudo dpkg --purge ferry
[ ! -e /etc/ferry/config.toml ] || fail "/etc/ferry/config.toml is still there after purge"
if getent passwd ferry >/dev/null; then fail "the ferry user is still there after purge"; fi
if getent group ferry >/dev/null; then fail "the ferry group is still there after purge"; fi
echo "removed and purged cleanly"
