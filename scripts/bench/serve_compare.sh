#!/usr/bin/env bash
# Online serving: `ferrollm serve` against llama.cpp's Python server (llama-cpp-python's
# `python -m llama_cpp.server`) on the same GGUF file and thread count, one server at a time on
# loopback, loaded by `ferrollm bench serve` at several concurrency levels.
#
#   scripts/bench/serve_compare.sh [MODEL.gguf]
#
# Settings (environment): THREADS=2 CONCS="1 16 64" PROMPTS="4 32 128" INPUT_LEN=128
# OUTPUT_LEN=64 REPS=3 PROMPT_FORMAT=auto|tokens|text FERROLLM_BIN=target/release/ferrollm
# PY=/opt/ref-venv/bin/python PORT_OURS=8123 PORT_LLAMA=8124 N_CTX=8192 OUT_DIR=<temp dir>
# FERROLLM_SERVE_ARGS="" LLAMA_SERVER_ARGS="".
#
# Each rep starts each server afresh (so no prefix cache or KV state carries over), runs every
# concurrency level against it, and stops it; the servers' order alternates between reps. Within
# a rep both servers get identical prompts (seed = 1000 * rep + concurrency). The table shows
# medians over reps and ferrollm / llama.cpp ratios.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=${1:-$HOME/.cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}
CONCS=(${CONCS:-1 16 64})
PROMPTS=(${PROMPTS:-4 32 128})
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-64}
REPS=${REPS:-3}
PROMPT_FORMAT=${PROMPT_FORMAT:-auto}
FERROLLM_BIN=${FERROLLM_BIN:-$ROOT/target/release/ferrollm}
PY=${PY:-/opt/ref-venv/bin/python}
PORT_OURS=${PORT_OURS:-8123}
PORT_LLAMA=${PORT_LLAMA:-8124}
N_CTX=${N_CTX:-8192}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/serve_compare.XXXXXX)}
READY_TIMEOUT=${READY_TIMEOUT:-180}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-900}

die() { echo "serve_compare: $*" >&2; exit 1; }

[[ ${#CONCS[@]} -eq ${#PROMPTS[@]} ]] || die "CONCS and PROMPTS need the same number of entries"
[[ -f $MODEL ]] || die "no such model file: $MODEL"
[[ -x $FERROLLM_BIN ]] || die "no ferrollm binary at $FERROLLM_BIN (cargo build --release -p ferrollm-cli, or set FERROLLM_BIN)"
"$PY" -c 'import llama_cpp.server.app' 2>/dev/null || die "llama_cpp.server does not import with $PY; install its server deps without rebuilding llama-cpp-python:
  $PY -m pip install uvicorn fastapi sse-starlette starlette-context pydantic-settings pyyaml"
command -v curl >/dev/null || die "curl is needed"
mkdir -p "$OUT_DIR"

# --- What llama_cpp.server accepts -----------------------------------------------------------
if [[ $PROMPT_FORMAT == auto ]]; then
    if "$PY" -c 'from llama_cpp.server.types import CreateCompletionRequest as R; R(prompt=[1000, 1001])' 2>/dev/null; then
        PROMPT_FORMAT=tokens
    else
        PROMPT_FORMAT=text
        echo "note: llama_cpp.server rejects token-id prompts (its prompt field is str | list[str]), so both"
        echo "      servers get the same random text prompts, built with the model's tokenizer to re-encode"
        echo "      to exactly $INPUT_LEN tokens."
    fi
fi
FORMAT_ARGS=(--prompt-format "$PROMPT_FORMAT")
[[ $PROMPT_FORMAT == text ]] && FORMAT_ARGS+=(--tokenizer "$MODEL")

# llama_cpp.server has no ignore_eos (it drops unknown fields): a -1e9 logit bias on every
# end-of-generation token of llama.cpp's own vocabulary (llama_vocab_is_eog) does the same job.
# ferrollm gets plain `ignore_eos: true` (it rejects logit_bias). The bias is a Python logits
# processor inside llama-cpp-python, a small per-token cost on its side.
LLAMA_EXTRA=$("$PY" - "$MODEL" <<'EOF' 2>/dev/null
import json, sys
import llama_cpp as L
L.llama_backend_init()
mp = L.llama_model_default_params()
mp.vocab_only = True
m = L.llama_model_load_from_file(sys.argv[1].encode(), mp)
v = L.llama_model_get_vocab(m)
eog = [i for i in range(L.llama_vocab_n_tokens(v)) if L.llama_vocab_is_eog(v, i)]
print(json.dumps({"logit_bias": {str(i): -1e9 for i in eog}}))
EOF
) || die "could not read the end-of-generation tokens of $MODEL with llama_cpp"

# --- Server lifecycle ------------------------------------------------------------------------
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_of() { [[ $1 == ferrollm ]] && echo "$PORT_OURS" || echo "$PORT_LLAMA"; }

start_server() { # name log
    local name=$1 log=$2 port
    port=$(port_of "$name")
    if curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/"; then
        die "port $port is already in use; set PORT_OURS / PORT_LLAMA"
    fi
    if [[ $name == ferrollm ]]; then
        RUST_LOG=${RUST_LOG:-warn} "$FERROLLM_BIN" serve "$MODEL" --host 127.0.0.1 --port "$port" \
            --threads "$THREADS" ${FERROLLM_SERVE_ARGS:-} >"$log" 2>&1 &
    else
        "$PY" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$port" \
            --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$N_CTX" --n_batch 512 \
            --interrupt_requests False --verbose False ${LLAMA_SERVER_ARGS:-} >"$log" 2>&1 &
    fi
    SERVER_PID=$!
    local t0=$SECONDS
    until curl -sf -m 2 -o /dev/null "http://127.0.0.1:$port/v1/models"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 30 "$log" >&2
            die "$name server exited during start-up (log: $log)"
        fi
        if ((SECONDS - t0 > READY_TIMEOUT)); then
            tail -n 30 "$log" >&2
            die "$name server not ready after ${READY_TIMEOUT}s (log: $log)"
        fi
        sleep 0.5
    done
}

HWM=0
stop_server() { # sets HWM: the server's peak RSS in KiB
    HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || true)
    HWM=${HWM:-0}
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# --- Runs ------------------------------------------------------------------------------------
echo "model: $MODEL"
echo "ferrollm: $FERROLLM_BIN (tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)); llama-cpp-python $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
echo "threads: $THREADS · input $INPUT_LEN · output $OUTPUT_LEN · concurrency ${CONCS[*]} with ${PROMPTS[*]} prompts · $REPS reps · prompts as $PROMPT_FORMAT"
echo "results: $OUT_DIR"
read -r l1 l2 l3 _ </proc/loadavg
echo "load average before: $l1 $l2 $l3 on $(nproc) CPUs"
echo "note: llama_cpp.server serves one request at a time (a lock around its single Llama object);"
echo "      concurrent requests queue, so its TTFT at concurrency > 1 includes that queueing."

t_all=$SECONDS
for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2 == 1)); then order=(llama.cpp ferrollm); else order=(ferrollm llama.cpp); fi
    for name in "${order[@]}"; do
        log="$OUT_DIR/server_${name}_r$rep.log"
        t0=$SECONDS
        start_server "$name" "$log"
        echo "rep $rep: $name ready in $((SECONDS - t0)) s"
        port=$(port_of "$name")
        extra=()
        [[ $name == llama.cpp ]] && extra=(--extra-body "$LLAMA_EXTRA")
        for i in "${!CONCS[@]}"; do
            c=${CONCS[$i]} n=${PROMPTS[$i]}
            json="$OUT_DIR/${name}_c${c}_r${rep}.json"
            blog="$OUT_DIR/${name}_c${c}_r${rep}.log"
            if ! "$FERROLLM_BIN" bench serve --base-url "http://127.0.0.1:$port" --num-prompts "$n" \
                --max-concurrency "$c" --request-rate inf --random-input-len "$INPUT_LEN" \
                --random-output-len "$OUTPUT_LEN" --seed $((1000 * rep + c)) "${FORMAT_ARGS[@]}" \
                --request-timeout "$REQUEST_TIMEOUT" --label "$name" --output-json "$json" \
                "${extra[@]}" >"$blog" 2>&1; then
                tail -n 20 "$blog" >&2
                die "bench serve failed against $name at concurrency $c (log: $blog)"
            fi
            "$PY" - "$json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
warn = f"  FAILED {d['failed']}" if d["failed"] else ""
warn += f"  SHORT {d['early_stops']}" if d["early_stops"] else ""
print(f"  {d['label']:<10} c={d['max_concurrency']:<3} n={d['num_prompts']:<4} {d['duration']:6.1f} s  "
      f"out {d['output_throughput']:7.1f} tok/s  TTFT med {d['median_ttft_ms']:8.1f} ms  "
      f"TPOT med {d['median_tpot_ms']:6.1f} ms{warn}")
EOF
        done
        stop_server
        echo "{\"label\": \"$name\", \"rep\": $rep, \"vm_hwm_kib\": $HWM}" >"$OUT_DIR/rss_${name}_r$rep.json"
    done
done
echo "total time: $((SECONDS - t_all)) s"

# --- Table -----------------------------------------------------------------------------------
"$PY" - "$OUT_DIR" <<'EOF'
import glob, json, os, statistics, sys
d = sys.argv[1]
runs = [json.load(open(p)) for p in glob.glob(os.path.join(d, "*_c*_r*.json"))]
rss = [json.load(open(p)) for p in glob.glob(os.path.join(d, "rss_*.json"))]
names = ["ferrollm", "llama.cpp"]
concs = sorted({r["max_concurrency"] for r in runs})
metrics = [("output_throughput", "output tok/s", True), ("request_throughput", "req/s", True),
           ("median_ttft_ms", "median TTFT ms", False), ("p99_ttft_ms", "p99 TTFT ms", False),
           ("median_tpot_ms", "median TPOT ms", False), ("median_itl_ms", "median ITL ms", False),
           ("p99_itl_ms", "p99 ITL ms", False)]
print()
print(f"{'conc':>4}  {'metric (median over reps)':<26}{'ferrollm':>12}{'llama.cpp':>12}{'ratio':>9}")
print("-" * 63)
for c in concs:
    for key, label, higher in metrics:
        vals = {}
        for n in names:
            xs = [r[key] for r in runs if r["label"] == n and r["max_concurrency"] == c]
            vals[n] = statistics.median(xs) if xs else float("nan")
        ratio = vals["ferrollm"] / vals["llama.cpp"] if vals["llama.cpp"] else float("nan")
        print(f"{c:>4}  {label:<26}{vals['ferrollm']:>12.2f}{vals['llama.cpp']:>12.2f}{ratio:>9.2f}")
    print()
for n in names:
    hw = [r["vm_hwm_kib"] for r in rss if r["label"] == n]
    if hw:
        print(f"peak RSS of the {n} server: {max(hw) / 1024:.0f} MiB")
bad = [(r["label"], r["max_concurrency"], r["failed"], r["early_stops"]) for r in runs if r["failed"] or r["early_stops"]]
for label, c, f, e in bad:
    print(f"WARNING: {label} at concurrency {c}: {f} failed requests, {e} requests stopped before max_tokens")
print("ratio = ferrollm / llama.cpp: above 1 is better for tok/s and req/s, below 1 is better for latencies.")
n = next(iter(runs), {})
print(f"prompts: {n.get('prompt_format')}, {n.get('random_input_len')} tokens in, {n.get('random_output_len')} out")
EOF
read -r l1 l2 l3 _ </proc/loadavg
echo "load average after: $l1 $l2 $l3"
