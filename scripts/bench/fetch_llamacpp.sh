#!/usr/bin/env bash
# Builds llama.cpp's own C++ benchmark tools -- llama-bench, llama-batched-bench and
# llama-server -- from the llama.cpp that llama-cpp-python 0.3.36 vendors (the same llama.cpp
# as the reference venv /opt/ref-venv), for scripts/bench/kernels_compare.py.
#
#   scripts/bench/fetch_llamacpp.sh            # prints the bin directory on its last line
#
# Result: ~/.cache/ferrollm/llama.cpp/<llama.cpp commit>[-noamx]/bin/{llama-bench,llama-batched-bench,llama-server}
# (statically linked against ggml/llama, so the directory can be moved). Idempotent: when all
# three binaries are there it only prints the directory.
#
# Source: the llama-cpp-python sdist from PyPI (its vendor/llama.cpp), fetched with
# `pip download --no-deps --no-binary llama-cpp-python --require-hashes` -- or taken from
# SDIST=/path/to/the.tar.gz -- and checked against a pinned sha256 (by pip and again here).
#
# Build: cmake (from PATH, or pip-installed as a wheel into a private venv next to the build),
# -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release, Web UI off (no network at build time),
# `cmake --build --target llama-bench llama-batched-bench llama-server -j$JOBS`.
#
# Settings (environment): JOBS=2, CACHE_DIR=~/.cache/ferrollm/llama.cpp, SDIST=, PY=python3,
# ISA= (see below).
set -euo pipefail

LCP_VERSION=0.3.36
LLAMA_COMMIT=0c1e57098 # "update llama.cpp to ggml-org/llama.cpp@0c1e57098" in its CHANGELOG
SDIST_NAME=llama_cpp_python-$LCP_VERSION.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-bench llama-batched-bench llama-server)

JOBS=${JOBS:-2}
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/ferrollm/llama.cpp}
PY=${PY:-python3}
# llama.cpp's AMX matmul (ggml-cpu/amx) segfaults on this workplace's Sapphire-Rapids-class
# machines, in the first matmul of every quantized model (ggml_backend_amx_mul_mat; upstream
# issue ggml-org/llama.cpp#20824, open without a fix). On a CPU with AMX we therefore compile it
# out and keep everything else -march=native gives (AVX-512, VNNI, BF16): GCC's explicit -mno-*
# flags win over the features -march=native implies, whatever their order on the command line.
# --repack 0 at run time would also avoid it, but it turns off llama.cpp's AVX2/AVX-512 repacked
# kernels too, which is not llama.cpp at its best.
#
# ISA=avx2 instead builds for AVX2 + FMA + F16C only (what an AMD Zen 3 has: no AVX-512, no
# AVX-VNNI, no AMX) on a CPU that has more, into a directory of its own (`<commit>-avx2`): with
# ferrollm's `FERROLLM_NO_AVX512=1 FERROLLM_NO_VNNI=1` it compares the two engines' AVX2 code
# on one machine (`kernels_compare.py --avx2-only`).
EXTRA_FLAGS=""
BUILD_TAG=$LLAMA_COMMIT
if [[ ${ISA:-} == avx2 ]]; then
    EXTRA_FLAGS="-mno-avx512f -mno-avxvnni -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    BUILD_TAG=$LLAMA_COMMIT-avx2
elif [[ -n ${ISA:-} ]]; then
    echo "fetch_llamacpp: ISA=$ISA: only ISA=avx2 is known" >&2
    exit 1
elif grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    BUILD_TAG=$LLAMA_COMMIT-noamx
fi
ROOT_DIR=$CACHE_DIR/$BUILD_TAG
BIN_DIR=$ROOT_DIR/bin
SRC_DIR=$ROOT_DIR/src
BUILD_DIR=$ROOT_DIR/build
DL_DIR=$CACHE_DIR/downloads

die() { echo "fetch_llamacpp: $*" >&2; exit 1; }
log() { echo "fetch_llamacpp: $*" >&2; }

have_all() {
    local t
    for t in "${TARGETS[@]}"; do [[ -x $BIN_DIR/$t ]] || return 1; done
}

if have_all; then
    log "already built (llama-cpp-python $LCP_VERSION, llama.cpp $LLAMA_COMMIT)"
    echo "$BIN_DIR"
    exit 0
fi

sha_ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$SDIST_SHA256" ]]; }

# --- 1. The sdist ------------------------------------------------------------------------------
fetch_sdist() {
    mkdir -p "$DL_DIR"
    local dst=$DL_DIR/$SDIST_NAME
    if sha_ok "$dst"; then return; fi
    rm -f "$dst"
    if [[ -n ${SDIST:-} ]]; then
        sha_ok "$SDIST" || die "SDIST=$SDIST does not have sha256 $SDIST_SHA256"
        cp "$SDIST" "$dst"
        return
    fi
    log "downloading $SDIST_NAME from PyPI with pip"
    local tmp
    tmp=$(mktemp -d "$DL_DIR/pip.XXXXXX")
    # pip checks the hash itself (--require-hashes). Only this package is taken as source:
    # `--no-binary :all:` would also build scikit-build-core's build dependencies (cmake!) from
    # source just to prepare the sdist's metadata, which takes 20+ minutes on 2 cores.
    echo "llama-cpp-python==$LCP_VERSION --hash=sha256:$SDIST_SHA256" >"$tmp/req.txt"
    "$PY" -m pip download --no-deps --no-binary llama-cpp-python --require-hashes -r "$tmp/req.txt" \
        -d "$tmp" >"$tmp/pip.log" 2>&1 || { tail -n 20 "$tmp/pip.log" >&2; die "pip download failed (log: $tmp/pip.log)"; }
    sha_ok "$tmp/$SDIST_NAME" || die "$tmp/$SDIST_NAME is missing or does not have sha256 $SDIST_SHA256"
    mv "$tmp/$SDIST_NAME" "$dst"
    rm -rf "$tmp"
}

unpack_source() {
    [[ -f $SRC_DIR/CMakeLists.txt && -d $SRC_DIR/tools/llama-bench ]] && return
    log "unpacking vendor/llama.cpp"
    rm -rf "$SRC_DIR" "$SRC_DIR.tmp"
    mkdir -p "$SRC_DIR.tmp"
    tar -xzf "$DL_DIR/$SDIST_NAME" -C "$SRC_DIR.tmp" --strip-components=3 \
        "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
    grep -q "llama.cpp@$LLAMA_COMMIT" <(tar -xzOf "$DL_DIR/$SDIST_NAME" "llama_cpp_python-$LCP_VERSION/CHANGELOG.md") ||
        log "warning: the sdist's CHANGELOG does not name llama.cpp@$LLAMA_COMMIT"
    mv "$SRC_DIR.tmp" "$SRC_DIR"
}

# --- 2. cmake ----------------------------------------------------------------------------------
find_cmake() {
    if command -v cmake >/dev/null; then command -v cmake; return; fi
    local venv=$CACHE_DIR/cmake-venv
    if [[ ! -x $venv/bin/cmake ]]; then
        log "no cmake on PATH: installing the cmake wheel into $venv"
        "$PY" -m venv "$venv" >&2
        "$venv/bin/python" -m pip install --only-binary :all: "cmake>=3.21" >&2 ||
            die "could not pip install cmake"
    fi
    echo "$venv/bin/cmake"
}

# --- 3. Build ----------------------------------------------------------------------------------
fetch_sdist
unpack_source
CMAKE=$(find_cmake)
log "cmake: $CMAKE ($("$CMAKE" --version | head -n 1))"
t0=$SECONDS
"$CMAKE" -S "$SRC_DIR" -B "$BUILD_DIR" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$EXTRA_FLAGS" \
    -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_NUMBER=0 \
    -DLLAMA_BUILD_COMMIT="$LLAMA_COMMIT" >&2
"$CMAKE" --build "$BUILD_DIR" --config Release --target "${TARGETS[@]}" -j "$JOBS" >&2
mkdir -p "$BIN_DIR"
for t in "${TARGETS[@]}"; do
    f=$(find "$BUILD_DIR/bin" "$BUILD_DIR" -maxdepth 1 -name "$t" -type f -perm -u+x 2>/dev/null | head -n 1)
    [[ -n $f ]] || die "the build did not produce $t"
    cp "$f" "$BIN_DIR/$t"
done
cat >"$BIN_DIR/BUILD_INFO" <<EOF
llama-cpp-python $LCP_VERSION sdist (sha256 $SDIST_SHA256)
llama.cpp $LLAMA_COMMIT (vendor/llama.cpp)
cmake -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DCMAKE_C_FLAGS/CXX_FLAGS="$EXTRA_FLAGS" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
compiler: $(${CXX:-c++} --version | head -n 1)
host: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - t0)) s with -j$JOBS
EOF
log "built ${TARGETS[*]} in $((SECONDS - t0)) s"
echo "$BIN_DIR"
