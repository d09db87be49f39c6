# Shared by scripts/test, scripts/serve and scripts/test-services; source it, do not run it.
# shellcheck shell=bash

# The uv that installs .venv from uv.lock. Bump it here only.
RELAY_UV_VERSION=0.13.9

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# apt_install PACKAGE...: install Debian packages non-interactively (root only).
# Services that the packages would start (Debian's main PostgreSQL cluster on 5432, redis on 6379)
# are neither created nor started: the tests run their own throwaway servers.
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing packages: $* (install them, or run as root so that this script can)"
    command -v apt-get >/dev/null || die "missing packages: $* (and no apt-get to install them with)"
    say "installing with apt: $*"
    local policy=/usr/sbin/policy-rc.d added_policy=0
    local no_cluster=/etc/postgresql-common/createcluster.d/zz-relay-no-main-cluster.conf
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
    fi
    mkdir -p "$(dirname "$no_cluster")" && echo 'create_main_cluster = false' >"$no_cluster"
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null >/dev/null; } || rc=$?
    rm -f "$no_cluster"
    if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi
    [ "$rc" = 0 ] || die "apt-get install $* failed (exit $rc)"
}

# ensure_venv: .venv exists, holds the pinned uv, and matches uv.lock exactly (uv itself kept aside).
# Fast when nothing changed: uv checks the lock and the installed packages in a few milliseconds.
venv_belongs_here() {
    # A venv is not relocatable: its scripts' #! lines name the directory it was made in. A .venv
    # copied or cloned from elsewhere must be made again.
    .venv/bin/python -c 'import sys' 2>/dev/null || return 1
    case "$(head -n 1 .venv/bin/pip 2>/dev/null || true)" in
        "#!$(pwd -P)/.venv/bin/python"*) return 0 ;;
        *) return 1 ;;
    esac
}

ensure_venv() {
    if [ -e .venv ] && ! venv_belongs_here; then
        say "removing .venv: it was made for another directory or interpreter"
        rm -rf .venv
    fi
    if [ ! -x .venv/bin/python ]; then
        command -v python3 >/dev/null || apt_install python3 python3-venv
        # Debian ships venv's ensurepip separately, in python3-venv.
        python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
        say "creating .venv"
        python3 -m venv .venv
    fi
    case "$(.venv/bin/uv --version 2>/dev/null || true)" in
        "uv $RELAY_UV_VERSION"|"uv $RELAY_UV_VERSION "*) ;;
        *) say "installing uv $RELAY_UV_VERSION into .venv"
           .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$RELAY_UV_VERSION" ;;
    esac
    # --locked: fail if uv.lock is stale instead of re-resolving. --inexact: keep uv itself in .venv.
    env -u VIRTUAL_ENV -u UV_PROJECT_ENVIRONMENT UV_PYTHON_DOWNLOADS=never \
        .venv/bin/uv sync --locked --inexact --quiet
}
