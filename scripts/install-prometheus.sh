#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package) for tests/deploy.
# Idempotent; never fails the caller: where it cannot install (no apt-get, not root, no
# network), it says why and exits 0, and the tests that need it skip with that reason.
set -u

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "install-prometheus: already installed ($(promtool --version 2>&1 | head -n 1))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus: no apt-get here; tests needing promtool/prometheus will skip"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-prometheus: not root and no sudo; tests needing promtool/prometheus will skip"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# The package's postinst tries to start the service; in a container policy-rc.d refuses,
# which is what we want (the tests start their own Prometheus on 127.0.0.1).
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends prometheus; } >/tmp/install-prometheus.log 2>&1; then
    echo "install-prometheus: apt-get failed (see /tmp/install-prometheus.log); tests needing it will skip"
    tail -n 5 /tmp/install-prometheus.log
    exit 0
fi
# Stop a service the package may have started (outside containers), so nothing listens.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "install-prometheus: installed ($(promtool --version 2>&1 | head -n 1))"
