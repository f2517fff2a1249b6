#!/usr/bin/env bash
# The admin console in a real browser: Debian's headless Chromium, driven by selenium, against a
# real fieldsync-server seeded with clinic data synced from devices: the therapists' tablets
# written by `fieldsync-device seed` (the project's clinic data generator), every device syncing
# through the Python bindings.
# Screenshots of each page go to target/console-screenshots/. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "Chromium is missing: run \`sudo apt-get install chromium chromium-driver\`" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium chromium-driver
fi
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install --quiet pytest
python3 -c 'import selenium' 2>/dev/null || python3 -m pip install --quiet selenium

cargo build --quiet -p fieldsync-server
cargo build --quiet -p fieldsync-tests --bin fieldsync-device
bindings/python/build.sh
python3 -m pytest -q tests/console "$@"
