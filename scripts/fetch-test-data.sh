#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer test vectors (vocab-only GGUFs plus .inp/.out pairs) that
# crates/ferrollm-models/tests/ compare ferrollm's tokenizer against.
#
# They ship inside the llama-cpp-python source distribution on PyPI (vendor/llama.cpp/models/),
# so one pinned, hash-checked `pip download` gives a reproducible set without cloning llama.cpp.
#
# Idempotent: files already in the cache with the right sha256 are left alone.
# Cache: $FERROLLM_TESTDATA, default ${FERROLLM_CACHE:-~/.cache/ferrollm}/testdata.
set -euo pipefail

VERSION="0.3.36"
SDIST="llama_cpp_python-${VERSION}.tar.gz"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
DEST="${FERROLLM_TESTDATA:-${FERROLLM_CACHE:-$HOME/.cache/ferrollm}/testdata}"
PYTHON="${PYTHON:-python3}"

# name sha256, for every file we extract (from the pinned sdist above).
FILES="
ggml-vocab-qwen2.gguf 44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c
ggml-vocab-qwen2.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-qwen2.gguf.out de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363
ggml-vocab-gpt-2.gguf cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac
ggml-vocab-gpt-2.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-gpt-2.gguf.out 48e8c4cb3ad5c37915b225f872222567c1c4dd4d66951aa53460c8d152ff6d60
ggml-vocab-llama-bpe.gguf 97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e
ggml-vocab-llama-bpe.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-llama-bpe.gguf.out 118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b
ggml-vocab-starcoder.gguf fedb892b4e1bd3c1f2fcdae356440b14fb458f4264d586e5c987ed93df4e174d
ggml-vocab-starcoder.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-starcoder.gguf.out 3ef12183c57ad076f9defd8e5eb454f509f5f0865cad35646abb4c4b2d2c5764
ggml-vocab-refact.gguf ac3ceda902fed91ccf74312b305d9b86c37e4f8e35fa9cc6ef3ce34fca7d4678
ggml-vocab-refact.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-refact.gguf.out c7e5c1c5dc1dfd3e0d56576bf699d2aca0b760b80779523ea9d323aad6cd1b88
ggml-vocab-mpt.gguf 59dc382612866d1fc6c11ea531318d327598f3412d9c8f8600607cdf3030898f
ggml-vocab-mpt.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-mpt.gguf.out 9d0982a7e7950b81bc2e325fb61bb7e295d2238934ab889737494de2dc4d906b
ggml-vocab-command-r.gguf a2f8cfea952ef7c391a6d92a1c309d0bd32e36384d9b9230569a7425732f27d9
ggml-vocab-command-r.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-command-r.gguf.out d2a601336e422b60a264858c01b14c5d37575fe1f9adfcafc2f3b3707903903f
ggml-vocab-deepseek-coder.gguf 91cb1379f2e33af1c4866b194622b7a0e12e8f0c9dba7ba2f10d55978730bec1
ggml-vocab-deepseek-coder.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-deepseek-coder.gguf.out c2cea4584b0487e67fbd81f491bb44f89238722062126120d2c412edb3dbd853
ggml-vocab-falcon.gguf 9f0bf8b0733680398b72e652e90f260f43782f326e75545fc0e49611a5ba35ad
ggml-vocab-falcon.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-falcon.gguf.out f8c80a0483582ef195c2129b69bb2e4e421b0f31ed7b35d84b63511d7ebae7cd
ggml-vocab-llama-spm.gguf 16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69
ggml-vocab-llama-spm.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-llama-spm.gguf.out ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29
ggml-vocab-phi-3.gguf 967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326
ggml-vocab-phi-3.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
ggml-vocab-phi-3.gguf.out ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29
"

die() { echo "fetch-test-data: error: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

all_present() {
    local name sum
    while read -r name sum; do
        [ -z "$name" ] && continue
        [ -f "$DEST/$name" ] || return 1
        [ "$(sha_of "$DEST/$name")" = "$sum" ] || return 1
    done <<<"$FILES"
}

command -v sha256sum >/dev/null || die "sha256sum not found (install coreutils)"
mkdir -p "$DEST"

if all_present; then
    echo "fetch-test-data: all test files present and verified in $DEST"
    exit 0
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON=/path/to/python3 (needs pip)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-test-data: downloading llama-cpp-python ${VERSION} source from PyPI (about 75 MB)..."
# --no-binary for this one package only: its build dependencies may come as wheels, which keeps
# pip's metadata step fast.
"$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==${VERSION}" -d "$TMP" \
    || die "pip download failed (network? PyPI reachable?)"
[ -f "$TMP/$SDIST" ] || die "pip did not produce $SDIST"
got="$(sha_of "$TMP/$SDIST")"
[ "$got" = "$SDIST_SHA256" ] || die "$SDIST sha256 mismatch: got $got, want $SDIST_SHA256"

prefix="llama_cpp_python-${VERSION}/vendor/llama.cpp/models"
members=()
while read -r name sum; do
    [ -z "$name" ] && continue
    members+=("$prefix/$name")
done <<<"$FILES"
tar xzf "$TMP/$SDIST" -C "$TMP" "${members[@]}" || die "could not extract test files from $SDIST"

while read -r name sum; do
    [ -z "$name" ] && continue
    got="$(sha_of "$TMP/$prefix/$name")"
    [ "$got" = "$sum" ] || die "$name sha256 mismatch: got $got, want $sum"
    cp "$TMP/$prefix/$name" "$DEST/$name.part"
    mv "$DEST/$name.part" "$DEST/$name"
done <<<"$FILES"

echo "fetch-test-data: wrote $(echo "$FILES" | grep -c .) files to $DEST"
