#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine with Python 3.11: the virtualenv, the package, git,
# and Fashion-MNIST (Debian's dataset-fashion-mnist; elsewhere ingest falls back to torchvision's downloader).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

source scripts/lib.sh  # apt_install

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing Debian package dataset-fashion-mnist"
  apt_install dataset-fashion-mnist || echo "setup: no apt; ingest will download Fashion-MNIST into data/raw"
fi
command -v git >/dev/null || { echo "setup: installing git"; apt_install git; }

if [ ! -x .venv/bin/sslpipe ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: creating .venv and installing the package (first time: a few minutes)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,team]"
  touch .venv/.installed
fi
