#!/usr/bin/env bash
# Debian's chromium + chromedriver for the review page's browser test (tests/test_review.py), ~290 MB.
# Called by `make test`; does nothing when both are already installed. Needs root (or sudo) and apt.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-browser: need root (or sudo) for apt-get install chromium chromium-driver" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-browser: apt-get install chromium chromium-driver (once, ~290 MB)"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver
