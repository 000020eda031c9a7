#!/usr/bin/env bash
# Runs the curl examples of the README (or docs/curl-examples.md) against a server and checks
# each response, so the documented commands keep working.
#
# Each example is a ```sh block preceded by `<!-- curl-check: NAME -->`; NAME picks the check
# below. `http://localhost:8000` in the examples is replaced by the server's URL.
#
# Usage: scripts/test-curl-examples.sh [MARKDOWN_FILE]
#   FERROLLM_URL   server to test (default http://localhost:8000). If nothing answers there,
#                  the script starts `ferrollm serve` on a free port and stops it afterwards:
#   FERROLLM_BIN   the binary (default target/release/ferrollm)
#   FERROLLM_TEST_MODEL  the model (default ~/.cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }

doc="${1:-}"
if [ -z "$doc" ]; then
  if grep -q 'curl-check:' README.md 2>/dev/null; then doc=README.md; else doc=docs/curl-examples.md; fi
fi
url="${FERROLLM_URL:-http://localhost:8000}"
server_pid=""
log=""

cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$log" ]; then rm -f "$log"; fi
}
trap cleanup EXIT

if ! curl -sf "$url/health" >/dev/null 2>&1; then
  bin="${FERROLLM_BIN:-target/release/ferrollm}"
  model="${FERROLLM_TEST_MODEL:-$HOME/.cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
  [ -x "$bin" ] || { echo "no server at $url and no $bin: run cargo build --release -p ferrollm-cli" >&2; exit 1; }
  [ -f "$model" ] || { echo "missing $model: run scripts/fetch-models.sh" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  url="http://127.0.0.1:$port"
  log=$(mktemp)
  "$bin" serve "$model" --host 127.0.0.1 --port "$port" --kv-cache-memory 256MiB >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -sf "$url/health" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { echo "ferrollm serve exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  curl -sf "$url/health" >/dev/null || { echo "server did not become healthy:" >&2; cat "$log" >&2; exit 1; }
fi
echo "testing the curl examples of $doc against $url"

# Extracts "NAME<TAB>base64(command)" for every checked example.
examples=$(python3 - "$doc" <<'PY'
import base64, re, sys
text = open(sys.argv[1], encoding="utf-8").read()
for name, body in re.findall(r"<!--\s*curl-check:\s*([\w-]+)\s*-->\s*```(?:sh|bash)\n(.*?)```", text, re.S):
    print(name + "\t" + base64.b64encode(body.encode()).decode())
PY
)
[ -n "$examples" ] || { echo "no curl-check examples found in $doc" >&2; exit 1; }

# Checks one example's output (stdin) by name; exits non-zero with a reason on failure.
check() {
  python3 -c '
import json, sys
name, out = sys.argv[1], sys.stdin.read()

def body():
    return json.loads(out)

if name == "models":
    v = body(); assert v["object"] == "list" and v["data"][0]["id"], v
elif name == "completion":
    v = body(); c = v["choices"][0]
    assert v["object"] == "text_completion" and isinstance(c["text"], str) and c["finish_reason"], v
    assert v["usage"]["total_tokens"] == v["usage"]["prompt_tokens"] + v["usage"]["completion_tokens"], v
elif name == "chat":
    v = body(); m = v["choices"][0]["message"]
    assert v["object"] == "chat.completion" and m["role"] == "assistant" and m["content"], v
elif name == "chat-stream":
    data = [l[6:] for l in out.splitlines() if l.startswith("data: ")]
    assert data and data[-1] == "[DONE]", out
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant", chunks[0]
    assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks), out
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0, chunks[-1]
elif name == "chat-logprobs":
    v = body(); content = v["choices"][0]["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content), v
elif name == "completion-extras":
    v = body(); assert sorted(c["index"] for c in v["choices"]) == [0, 1], v
elif name == "json-schema":
    v = body(); r = json.loads(v["choices"][0]["message"]["content"])
    assert set(r) == {"city", "population_millions"} and isinstance(r["city"], str), r
    assert 0 <= r["population_millions"] <= 50, r
elif name == "choice":
    v = body(); assert v["choices"][0]["text"] in ("positive", "negative", "neutral"), v
elif name == "regex":
    import re
    v = body(); assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v["choices"][0]["text"]), v
elif name == "grammar":
    v = body(); t = v["choices"][0]["text"]; assert t.startswith("SELECT ") and t.endswith(";"), v
elif name == "tokenize":
    v = body(); assert v["count"] == len(v["tokens"]) > 0, v
elif name == "detokenize":
    v = body(); assert isinstance(v["prompt"], str) and v["prompt"], v
elif name == "error":
    v = body(); assert v["error"]["param"] == "temperature" and v["error"]["message"], v
elif name == "health":
    assert out.splitlines()[0].split()[1] == "200", out
elif name == "version":
    assert body()["version"], out
elif name == "metrics":
    for m in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total"):
        assert m in out, (m, out)
else:
    raise SystemExit(f"no check named {name!r}")
' "$1"
}

errfile=$(mktemp)
passed=0
failed=0
while IFS=$'\t' read -r name b64; do
  cmd=$(printf '%s' "$b64" | base64 -d)
  cmd=${cmd//http:\/\/localhost:8000/$url}
  # Only stdout is checked: curl's progress meter goes to stderr.
  if out=$(bash -c "set -o pipefail; $cmd" 2>"$errfile") && printf '%s' "$out" | check "$name" >/dev/null 2>&1; then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name"
    printf '%s\n' "$out" | head -20 | sed 's/^/      /'
    tail -5 "$errfile" | sed 's/^/      stderr: /'
    printf '%s' "$out" | check "$name" 2>&1 | tail -3 | sed 's/^/      /' || true
    failed=$((failed + 1))
  fi
done <<<"$examples"

rm -f "$errfile"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
