#!/usr/bin/env bash
# The test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib.sh  # apt_install
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "test: installing Debian packages chromium and chromium-driver (headless browser for tests/test_ui.py)"
  apt_install chromium chromium-driver || echo "test: could not install them; tests/test_ui.py will fail"
fi
export GX_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
exec .venv/bin/python -m pytest "$@"
