#!/usr/bin/env bash
# The whole pipeline on the default data (Fashion-MNIST, `quick` profile); extra arguments go to `sslpipe run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sslpipe run "$@"
