#!/usr/bin/env bash
# System packages the test suite uses beyond Python's: Debian's headless Chromium and its chromedriver for the web
# console's browser tests (tests/real/test_console_real.py). Installed where this runs as root with apt (as CI
# does); elsewhere the browser tests say they are skipped and why.
set -uo pipefail
if { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -q && apt-get install -y -q chromium chromium-driver; } >/dev/null 2>&1 \
        || echo "chromium not installed; the console's browser tests are skipped"
else
    echo "chromium and chromedriver are not installed (needs root and apt); the console's browser tests are skipped"
fi
exit 0
