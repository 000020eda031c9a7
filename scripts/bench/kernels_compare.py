#!/usr/bin/env python3
"""ferrollm against llama.cpp's own C++ tools (llama-bench, llama-batched-bench, llama-server)
on the same GGUF files and thread count, in one run, with ratios (issue #6).

    scripts/bench/fetch_llamacpp.sh                 # once: builds the llama.cpp tools
    python3 scripts/bench/kernels_compare.py [--models smollm2-q4_1,...] [--reps 3] [--quick]

Python 3 standard library only. For each model (default: the five below) it runs each side of
the latency workload --reps times (3) and of the others --heavy-reps times (1), each run a fresh
process, alternating which engine goes first, and prints medians and ferrollm/llama.cpp ratios:

  latency   ours:   ferrollm bench latency --input-len 512 --output-len 128 --batch-size 1
            theirs: llama-bench -p 512 -n 0            (pp512: prefill tok/s)
                    llama-bench -p 0 -n 128 -d 512     (tg128 after 512 tokens: batch-1 decode,
                                                        the same context 512..640 as ours)
  batched   ours:   ferrollm bench latency --input-len 128 --output-len 128 --batch-size B
            theirs: llama-batched-bench -npp 128 -ntg 128 -npl 16,64   (S_TG t/s column)
            = aggregate decode tok/s of B sequences decoding together (B = 16, 64)
  offline   ours:   ferrollm bench throughput --num-prompts 256 --input-len 128 --output-len 128
            theirs: llama-server -np N -c N*(128+128+64), loaded with `ferrollm bench serve`
                    (256 requests at once, text prompts re-encoding to 128 tokens, 128 out,
                    ignore_eos), -cram 0 (no host prompt cache: random prompts never hit it); N is swept over --server-np in the first rep of the first
                    model (of every model with --sweep-each-model), and the best N (output
                    tok/s) is used for the later reps and models

It first compiles and runs scripts/bench/bandwidth.c (streaming read bandwidth with 1 and
--threads threads) and reports, for batch-1 decode, the effective bandwidth (bytes of weights
read per decoded token x tok/s) and its share of the probe. Bytes per token come from the GGUF
itself: every matrix except the token embedding (a row lookup), plus the embedding when it is
tied to the output head -- the same figure `ferrollm bench latency` prints. It also runs
scripts/bench/fma_peak.c and reports, for prefill, the matmul GFLOP/s (2 FLOP per weight of
every projection per prompt token) and its share of the f32 FMA peak, the ceiling for float
weights. --no-bandwidth skips both probes.

Peak RSS: wait4's ru_maxrss for the benchmark processes; VmHWM for the servers.
AVX2 only: --avx2-only compares the two engines' AVX2 + FMA + F16C code (an AMD Zen 3's ISA, which
issue 6's targets were set on) on a CPU that has AVX-512, VNNI or AMX: ours with
FERROLLM_NO_AVX512=1 FERROLLM_NO_VNNI=1, llama.cpp built by `ISA=avx2 scripts/bench/fetch_llamacpp.sh`.
The caches and cores are still this machine's, so it approximates a Zen 3, no more.
Threads: --threads for everything (ferrollm --threads; llama.cpp -t and -tb).
KV cache: f16 on both (ferrollm's default; llama.cpp -ctk f16 -ctv f16).
Flash attention (llama.cpp only): --llama-flash-attn, default `auto`, llama.cpp's own default,
which turns it on for the CPU backend (the graph uses FLASH_ATTN_EXT, as `llama-batched-bench
-v` shows); `off` to compare without it. ferrollm has a single attention path.
"""

import argparse
import glob
import json
import os
import re
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from measure import compile_and_run, run_measured

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL_DIR = os.path.expanduser("~/.cache/ferrollm/models")
LLAMA_CACHE = os.path.expanduser("~/.cache/ferrollm/llama.cpp")

# key -> file in MODEL_DIR. The "llama125m" files are SmolLM2-135M re-encoded by
# make_llama_variants.py (issue 6's "~125M Llama in f16, q8_0 and q4_0").
MODELS = {
    "smollm2-q4_1": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-0.5b-q4_k_m": "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
    "llama125m-f16": "SmolLM2-135M-Instruct.F16.gguf",
    "llama125m-q8_0": "SmolLM2-135M-Instruct.Q8_0.gguf",
    "llama125m-q4_0": "SmolLM2-135M-Instruct.Q4_0.gguf",
}
WORKLOADS = ("latency", "batched", "offline")

# --quick: every workload on every model, small and once (a smoke test, not a measurement).
QUICK = dict(reps=1, heavy_reps=1, iters=1, batched_iters=1, prefill_len=128, decode_len=32, batch_in=16,
             batch_out=16, batch_sizes="16,64", offline_prompts=32, offline_in=32, offline_out=16,
             server_np="16,64", bandwidth_mib=256)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated keys ({', '.join(MODELS)}) or GGUF paths")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="subset of " + ",".join(WORKLOADS))
    ap.add_argument("--reps", type=int, default=3, help="runs of each side of the latency workload, per model")
    ap.add_argument("--heavy-reps", type=int, default=1,
                    help="runs of each side of the batched and offline workloads (minutes each), per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3,
                    help="latency: measured iterations inside one run (ferrollm --num-iters, llama-bench -r)")
    ap.add_argument("--batched-iters", type=int, default=1,
                    help="batched: ferrollm --num-iters (after 1 warm-up); llama-batched-bench measures once")
    ap.add_argument("--prefill-len", type=int, default=512, help="latency: prompt tokens (pp)")
    ap.add_argument("--decode-len", type=int, default=128, help="latency: generated tokens (tg)")
    ap.add_argument("--batch-sizes", default="16,64", help="batched: concurrent sequences")
    ap.add_argument("--batch-in", type=int, default=128, help="batched: prompt tokens per sequence")
    ap.add_argument("--batch-out", type=int, default=128, help="batched: generated tokens per sequence")
    ap.add_argument("--offline-prompts", type=int, default=256)
    ap.add_argument("--offline-in", type=int, default=128)
    ap.add_argument("--offline-out", type=int, default=128)
    ap.add_argument("--server-np", default="16,32,64", help="llama-server -np values to sweep")
    ap.add_argument("--sweep-each-model", action="store_true",
                    help="sweep --server-np for every model (default: for the first model only; the "
                         "others use its best -np)")
    ap.add_argument("--serve-prompt-format", choices=["text", "tokens"], default="text",
                    help="how `ferrollm bench serve` sends prompts to llama-server")
    ap.add_argument("--ours-http", action="store_true",
                    help="offline: also run `ferrollm serve` under the same HTTP load generator")
    ap.add_argument("--llama-flash-attn", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--ferrollm", default=os.environ.get("FERROLLM_BIN", os.path.join(ROOT, "target/release/ferrollm")),
                    help="ferrollm binary (default: target/release/ferrollm)")
    ap.add_argument("--ferrollm-args", default="", help="extra engine flags for every ferrollm run")
    ap.add_argument("--llama-bin", default=None,
                    help=f"directory with llama-bench etc. (default: newest {LLAMA_CACHE}/*/bin)")
    ap.add_argument("--avx2-only", action="store_true",
                    help="both engines on AVX2 + FMA + F16C only (an AMD Zen 3's ISA) on a CPU with more: "
                         "ours with FERROLLM_NO_AVX512=1 FERROLLM_NO_VNNI=1 (which also keeps AMX off), "
                         "llama.cpp from `ISA=avx2 scripts/bench/fetch_llamacpp.sh` (<commit>-avx2)")
    ap.add_argument("--llama-server-args", default="-cram 0",
                    help="extra flags for llama-server (default: -cram 0, its host prompt cache off: random "
                         "prompts never hit it, and saving every finished slot costs time and RSS)")
    ap.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth and FMA probes")
    ap.add_argument("--bandwidth-mib", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    ap.add_argument("--output-json", help="write all runs and the summary here")
    ap.add_argument("--keep-dir", help="keep logs and raw JSON here (default: a temp dir, removed)")
    return ap


def parse_args(argv):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick:  # explicit flags still win over the quick defaults
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    args.models = [resolve_model(m) for m in split_list(args.models)]
    args.workloads = split_list(args.workloads)
    for w in args.workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}; choose from {', '.join(WORKLOADS)}")
    args.batch_sizes = [int(x) for x in split_list(args.batch_sizes)]
    args.server_np = [int(x) for x in split_list(args.server_np)]
    args.llama_bin = args.llama_bin or find_llama_bin(args.avx2_only)
    global AVX2_ONLY
    AVX2_ONLY = args.avx2_only
    return args


def split_list(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def resolve_model(m):
    if m in MODELS:
        return m, os.path.join(MODEL_DIR, MODELS[m])
    return os.path.basename(m), m


def find_llama_bin(avx2_only):
    """The newest build: of the AVX2-only ones (`<commit>-avx2`) with --avx2-only, else of the others."""
    dirs = [d for d in glob.glob(os.path.join(LLAMA_CACHE, "*", "bin"))
            if os.access(os.path.join(d, "llama-bench"), os.X_OK)
            and os.path.basename(os.path.dirname(d)).endswith("-avx2") == avx2_only]
    return max(dirs, key=os.path.getmtime) if dirs else None


def check_inputs(args):
    problems = []
    for key, path in args.models:
        if not os.path.exists(path):
            problems.append(f"no model file for {key}: {path}")
    if not os.access(args.ferrollm, os.X_OK):
        problems.append(f"no ferrollm binary at {args.ferrollm} (cargo build --release -p ferrollm-cli, or --ferrollm)")
    tools = ["llama-bench", "llama-batched-bench", "llama-server"]
    if not args.llama_bin or not all(os.access(os.path.join(args.llama_bin, t), os.X_OK) for t in tools):
        problems.append(f"llama.cpp tools not found in {args.llama_bin or LLAMA_CACHE + '/*/bin'}: "
                        "run scripts/bench/fetch_llamacpp.sh (or pass --llama-bin)")
    if problems:
        sys.exit("kernels_compare: " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------
# GGUF: bytes of weights read per decoded token
# --------------------------------------------------------------------------------------------


def _read_str(f):
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", errors="replace")


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_value(f, t):
    if t in _SCALAR:
        fmt = _SCALAR[t]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if t == 8:
        return _read_str(f)
    if t == 9:
        et, n = struct.unpack("<IQ", f.read(12))
        if et in _SCALAR:  # skip numeric arrays (token scores, types) without decoding them
            f.seek(n * struct.calcsize(_SCALAR[et]), 1)
            return None
        return [_read_value(f, et) for _ in range(n)]
    raise ValueError(f"unknown GGUF value type {t}")


def gguf_tensors(path):
    """Returns (metadata dict, [(name, dims, nbytes)]) with sizes from the data offsets."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        meta = {}
        for _ in range(n_kv):
            key = _read_str(f)
            (t,) = struct.unpack("<I", f.read(4))
            meta[key] = _read_value(f, t)
        infos = []
        for _ in range(n_tensors):
            name = _read_str(f)
            (nd,) = struct.unpack("<I", f.read(4))
            dims = struct.unpack(f"<{nd}Q", f.read(8 * nd))
            _ttype, off = struct.unpack("<IQ", f.read(12))
            infos.append((name, dims, off))
        align = meta.get("general.alignment") or 32
        data_start = -(-f.tell() // align) * align
    data_len = os.path.getsize(path) - data_start
    ends = sorted(off for _, _, off in infos)[1:] + [data_len]
    end_of = dict(zip(sorted(off for _, _, off in infos), ends))
    return meta, [(name, dims, end_of[off] - off) for name, dims, off in infos]


def decode_bytes_per_token(path):
    _, tensors = gguf_tensors(path)
    names = {n for n, _, _ in tensors}
    tied = "output.weight" not in names
    total = 0
    for name, dims, nbytes in tensors:
        is_matrix = len(dims) >= 2 and min(dims[:2]) > 1
        if not is_matrix or (name == "token_embd.weight" and not tied):
            continue
        total += nbytes
    return total


def prefill_flops_per_token(path):
    """Matmul FLOPs per prompt token: 2 per weight of every projection. The embedding is a
    lookup, and pp512 (like our prefill) computes logits for the last token only, so the output
    matrix does not count."""
    _, tensors = gguf_tensors(path)
    total = 0
    for name, dims, _ in tensors:
        if len(dims) >= 2 and min(dims[:2]) > 1 and name not in ("token_embd.weight", "output.weight"):
            n = 1
            for d in dims:
                n *= d
            total += 2 * n
    return total


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def show(cmd):
    print("    $ " + shlex.join(cmd), flush=True)


def run_logged(cmd, timeout, env=None, log_path=None):
    """Shows and runs cmd (see measure.run_measured), writing its output to log_path if given."""
    show(cmd)
    rc, o, e, rss, secs = run_measured(cmd, env=env, timeout=timeout)
    if log_path:
        with open(log_path, "w") as f:
            f.write(f"$ {shlex.join(cmd)}\n--- stdout\n{o}\n--- stderr\n{e}")
    return rc, o, e, rss, secs


def checked(cmd, args, log_path, env=None):
    rc, out, err, rss, secs = run_logged(cmd, args.timeout, env=env, log_path=log_path)
    if rc != 0:
        tail = (err.strip() or out.strip())[-1500:]
        raise RuntimeError(f"exit status {rc} (log: {log_path}):\n{tail}")
    return out, err, rss


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """A server process on loopback: started, waited for (/health), stopped (VmHWM kept)."""

    def __init__(self, cmd, port, log_path, env=None):
        self.cmd, self.port, self.log_path, self.env = cmd, port, log_path, env
        self.proc, self.hwm_kib = None, 0

    def __enter__(self):
        show(self.cmd)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        try:
            self._wait_ready(300)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.time() + timeout
        while not self._healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited during start-up (log: {self.log_path}):\n{self._tail()}")
            if time.time() > deadline:
                raise RuntimeError(f"server not ready after {timeout} s (log: {self.log_path})")
            time.sleep(0.25)

    def _healthy(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _tail(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()[-1500:]

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.hwm_kib = vm_hwm_kib(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return False


# --------------------------------------------------------------------------------------------
# ferrollm
# --------------------------------------------------------------------------------------------


# Set from --avx2-only: our runs keep to the AVX2 kernels.
AVX2_ONLY = False


def ours_env():
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    if AVX2_ONLY:
        env.update(FERROLLM_NO_AVX512="1", FERROLLM_NO_VNNI="1")
    return env


def ours_cmd(args, sub, model, json_path, extra):
    return ([args.ferrollm, "bench", sub, "--model", model, "--threads", str(args.threads),
             "--output-json", json_path] + extra + shlex.split(args.ferrollm_args))


def ours_latency(args, model, tag, input_len, output_len, batch, iters):
    json_path = os.path.join(args.work, f"{tag}.json")
    cmd = ours_cmd(args, "latency", model, json_path,
                   ["--input-len", str(input_len), "--output-len", str(output_len), "--batch-size", str(batch),
                    "--num-iters", str(iters), "--num-iters-warmup", "1"])
    out, _, rss = checked(cmd, args, os.path.join(args.work, f"{tag}.log"), env=ours_env())
    with open(json_path) as f:
        res = json.load(f)
    m = re.search(r"weights streamed per decode step: ([\d.]+) MB", out)
    res["weight_mb_reported"] = float(m.group(1)) if m else None
    res["rss_kib"] = rss
    return res


def ours_throughput(args, model, tag):
    json_path = os.path.join(args.work, f"{tag}.json")
    cmd = ours_cmd(args, "throughput", model, json_path,
                   ["--num-prompts", str(args.offline_prompts), "--input-len", str(args.offline_in),
                    "--output-len", str(args.offline_out)])
    _, _, rss = checked(cmd, args, os.path.join(args.work, f"{tag}.log"), env=ours_env())
    with open(json_path) as f:
        res = json.load(f)
    res["rss_kib"] = rss
    return res


def ours_http(args, model, tag, seed):
    port = free_port()
    cmd = [args.ferrollm, "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads)] + shlex.split(args.ferrollm_args)
    with Server(cmd, port, os.path.join(args.work, f"{tag}.server.log"), env=ours_env()) as srv:
        res = bench_serve(args, model, port, tag, seed, "ferrollm-serve")
    res["rss_kib"] = srv.hwm_kib
    return res


# --------------------------------------------------------------------------------------------
# llama.cpp
# --------------------------------------------------------------------------------------------


def llama_tool(args, name):
    return os.path.join(args.llama_bin, name)


def llama_common(args):
    t = str(args.threads)
    return ["-t", t, "-fa", args.llama_flash_attn, "-ctk", "f16", "-ctv", "f16"], t


def llama_bench_once(args, model, tag, p, n, depth):
    common, _ = llama_common(args)
    cmd = [llama_tool(args, "llama-bench"), "-m", model, "-p", str(p), "-n", str(n), "-d", str(depth),
           "-r", str(max(1, args.iters)), "-o", "json"] + common
    out, _, rss = checked(cmd, args, os.path.join(args.work, f"{tag}.log"))
    rows = json.loads(out[out.index("["):])
    row = next(r for r in rows if r["n_prompt"] == p and r["n_gen"] == n)
    return row, rss


def theirs_latency(args, model, tag):
    pp, rss_p = llama_bench_once(args, model, tag + "-pp", args.prefill_len, 0, 0)
    tg, rss_t = llama_bench_once(args, model, tag + "-tg", 0, args.decode_len, args.prefill_len)
    return {"prefill_tok_s": pp["avg_ts"], "decode_tok_s": tg["avg_ts"], "rss_kib": max(rss_p, rss_t),
            "model_size": pp.get("model_size"), "flash_attn": pp.get("flash_attn"),
            "build_commit": pp.get("build_commit")}


def theirs_batched(args, model, tag):
    common, t = llama_common(args)
    n_ctx = max(args.batch_sizes) * (args.batch_in + args.batch_out)
    cmd = [llama_tool(args, "llama-batched-bench"), "-m", model, "-tb", t, "-c", str(n_ctx),
           "-b", "2048", "-ub", "512", "-npp", str(args.batch_in), "-ntg", str(args.batch_out),
           "-npl", ",".join(map(str, args.batch_sizes)), "--output-format", "jsonl"] + common
    out, err, rss = checked(cmd, args, os.path.join(args.work, f"{tag}.log"))
    rows = [json.loads(l) for l in (out + "\n" + err).splitlines() if l.startswith("{") and '"speed_tg"' in l]
    if not rows:
        raise RuntimeError(f"no result lines from llama-batched-bench (log: {args.work}/{tag}.log)")
    res = {f"decode_tok_s_b{r['pl']}": r["speed_tg"] for r in rows}
    res.update(rss_kib=rss, flash_attn=rows[0].get("flash_attn"), n_ctx=n_ctx)
    return res


def llama_server_cmd(args, model, port, n_par):
    common, t = llama_common(args)
    n_ctx = n_par * (args.offline_in + args.offline_out + 64)
    return [llama_tool(args, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-tb", t, "-np", str(n_par), "-c", str(n_ctx)] + common + shlex.split(args.llama_server_args)


def theirs_offline(args, model, tag, seed, n_par):
    """llama-server with -np n_par under `ferrollm bench serve`; seed is the rep."""
    port = free_port()
    cmd = llama_server_cmd(args, model, port, n_par)
    with Server(cmd, port, os.path.join(args.work, f"{tag}.server.log")) as srv:
        res = bench_serve(args, model, port, tag, seed, f"llama-server-np{n_par}")
    res.update(rss_kib=srv.hwm_kib, np=n_par, rep=seed)
    return res


def bench_serve(args, model, port, tag, seed, label):
    json_path = os.path.join(args.work, f"{tag}.json")
    cmd = [args.ferrollm, "bench", "serve", "--base-url", f"http://127.0.0.1:{port}",
           "--num-prompts", str(args.offline_prompts), "--max-concurrency", str(args.offline_prompts),
           "--request-rate", "inf", "--random-input-len", str(args.offline_in),
           "--random-output-len", str(args.offline_out), "--seed", str(seed),
           "--prompt-format", args.serve_prompt_format, "--request-timeout", str(args.timeout),
           "--label", label, "--output-json", json_path]
    if args.serve_prompt_format == "text":
        cmd += ["--tokenizer", model]
    checked(cmd, args, os.path.join(args.work, f"{tag}.bench.log"), env=ours_env())
    with open(json_path) as f:
        d = json.load(f)
    if d["failed"] or d["early_stops"]:
        print(f"    WARNING: {label}: {d['failed']} failed, {d['early_stops']} stopped before max_tokens", flush=True)
    return {"output_tok_s": d["output_throughput"], "total_tok_s": d["total_token_throughput"],
            "requests_per_s": d["request_throughput"], "elapsed_s": d["duration"], "failed": d["failed"],
            "early_stops": d["early_stops"], "median_ttft_ms": d["median_ttft_ms"],
            "median_tpot_ms": d["median_tpot_ms"]}


# --------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------


def record(runs, side, wl, res, t0):
    runs.setdefault(wl, {}).setdefault(side, []).append(res)
    if "error" in res:
        print(f"    {wl:<8} {side:<10} FAILED: {res['error']}", flush=True)
        return
    keys = [k for k in res if "_tok_s" in k or k == "np"]
    figures = "  ".join(f"{k}={res[k]:.1f}" if isinstance(res[k], float) else f"{k}={res[k]}" for k in keys)
    print(f"    {wl:<8} {side:<10} {figures}  rss={res.get('rss_kib', 0) / 1024:.0f} MiB"
          f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def attempt(fn, *a):
    try:
        return fn(*a)
    except (RuntimeError, OSError, ValueError, KeyError, StopIteration, json.JSONDecodeError) as e:
        return {"error": str(e)}


def ours_batched(args, path, tag):
    res = {"rss_kib": 0}
    for b in args.batch_sizes:
        r = ours_latency(args, path, f"{tag}-b{b}", args.batch_in, args.batch_out, b, args.batched_iters)
        res[f"decode_tok_s_b{b}"] = r["decode_tok_s"]
        res["rss_kib"] = max(res["rss_kib"], r["rss_kib"])
    return res


def pick_np(runs):
    """The llama-server -np with the best output tok/s in the sweep (rep 1)."""
    sweep = [r for r in runs.get("offline", {}).get("llama.cpp", []) if "error" not in r]
    return max(sweep, key=lambda r: r["output_tok_s"])["np"] if sweep else None


def run_offline_theirs(args, path, tag, rep, runs):
    if rep == 0 and args.fixed_np is None:
        for n_par in args.server_np:
            t0 = time.perf_counter()
            record(runs, "llama.cpp", "offline", attempt(theirs_offline, args, path, f"{tag}-np{n_par}", rep, n_par), t0)
        return
    n_par = pick_np(runs) or args.fixed_np or args.server_np[-1]
    t0 = time.perf_counter()
    record(runs, "llama.cpp", "offline", attempt(theirs_offline, args, path, f"{tag}-np{n_par}", rep, n_par), t0)


def run_model(args, index, key, path):
    """Every workload, rep by rep; the side that goes first alternates with rep and model."""
    runs = {}
    for rep in range(max(args.reps, args.heavy_reps)):
        for wl in args.workloads:
            if rep >= (args.reps if wl == "latency" else args.heavy_reps):
                continue
            sides = ["ferrollm", "llama.cpp"] if (rep + index) % 2 == 0 else ["llama.cpp", "ferrollm"]
            for side in sides:
                tag = f"{key}-{wl}-{'ours' if side == 'ferrollm' else 'theirs'}-r{rep}"
                t0 = time.perf_counter()
                if wl == "offline" and side == "llama.cpp":
                    run_offline_theirs(args, path, tag, rep, runs)
                    continue
                fn = {("latency", "ferrollm"): lambda: ours_latency(args, path, tag, args.prefill_len, args.decode_len, 1, args.iters),
                      ("latency", "llama.cpp"): lambda: theirs_latency(args, path, tag),
                      ("batched", "ferrollm"): lambda: ours_batched(args, path, tag),
                      ("batched", "llama.cpp"): lambda: theirs_batched(args, path, tag),
                      ("offline", "ferrollm"): lambda: ours_throughput(args, path, tag)}[(wl, side)]
                record(runs, side, wl, attempt(fn), t0)
                if wl == "offline" and side == "ferrollm" and args.ours_http:
                    t0 = time.perf_counter()
                    record(runs, "ferrollm-http", wl, attempt(ours_http, args, path, tag + "-http", rep), t0)
    return runs


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def med(rs, key, filt=None):
    xs = [r[key] for r in rs if "error" not in r and key in r and (filt is None or filt(r))]
    return statistics.median(xs) if xs else None


def peak(rs):
    xs = [r["rss_kib"] for r in rs if "error" not in r and r.get("rss_kib")]
    return max(xs) / 1024 if xs else None


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def summarize_model(args, key, path, runs, bw, fma):
    """Returns rows (label, ours, theirs) of medians, and a summary dict."""
    bpt = decode_bytes_per_token(path)
    rows, s = [], {"bytes_per_token": bpt}

    def add(name, label, ours, theirs, nd=1):
        rows.append((label, fmt(ours, nd), fmt(theirs, nd), fmt(ratio(ours, theirs), 2)))
        s[name] = {"ferrollm": ours, "llama.cpp": theirs, "ratio": ratio(ours, theirs)}

    lat = runs.get("latency", {})
    if lat:
        o, t = lat.get("ferrollm", []), lat.get("llama.cpp", [])
        po, pt = med(o, "prefill_tok_s"), med(t, "prefill_tok_s")
        add("prefill_tok_s", f"prefill tok/s (pp{args.prefill_len})", po, pt)
        fpt = prefill_flops_per_token(path)
        fo, ft = (None if v is None else fpt * v / 1e9 for v in (po, pt))
        add("prefill_matmul_gflop_s", f"  matmul GFLOP/s ({fpt / 1e6:.0f} MFLOP/token)", fo, ft, 1)
        if fma.get(args.threads):
            peak_f = fma[args.threads]
            rows.append((f"  % of the {args.threads}-thread f32 FMA peak ({peak_f:.0f} GFLOP/s)",
                         fmt(None if fo is None else 100 * fo / peak_f, 0) + "%",
                         fmt(None if ft is None else 100 * ft / peak_f, 0) + "%", ""))
        do, dt = med(o, "decode_tok_s"), med(t, "decode_tok_s")
        add("decode_tok_s", f"decode tok/s, batch 1 (tg{args.decode_len} @ {args.prefill_len})", do, dt)
        go, gt = (None if d is None else bpt * d / 1e9 for d in (do, dt))
        add("effective_gb_s", f"  effective GB/s ({bpt / 1e6:.1f} MB/token)", go, gt, 2)
        mb = med(o, "weight_mb_reported")
        if mb is not None and abs(mb * 1e6 - bpt) > 0.02 * bpt:
            print(f"  note: ferrollm reports {mb:.1f} MB of weights per decode step, the GGUF count is {bpt / 1e6:.1f} MB")
        if bw.get(args.threads):
            probe = bw[args.threads]
            rows.append((f"  % of the {args.threads}-thread probe ({probe:.1f} GB/s)",
                         fmt(None if go is None else 100 * go / probe, 0) + "%",
                         fmt(None if gt is None else 100 * gt / probe, 0) + "%", ""))
        add("rss_latency_mib", "  peak RSS MiB (latency / llama-bench)", peak(o), peak(t), 0)
    bat = runs.get("batched", {})
    if bat:
        o, t = bat.get("ferrollm", []), bat.get("llama.cpp", [])
        for b in args.batch_sizes:
            add(f"decode_tok_s_b{b}", f"aggregate decode tok/s, {b} seqs ({args.batch_in} in)",
                med(o, f"decode_tok_s_b{b}"), med(t, f"decode_tok_s_b{b}"))
        add("rss_batched_mib", "  peak RSS MiB (batched)", peak(o), peak(t), 0)
    off = runs.get("offline", {})
    if off:
        o, t = off.get("ferrollm", []), off.get("llama.cpp", [])
        best = pick_np(runs)
        at_best = (lambda r: r.get("np") == best)
        s["llama_server_np"] = best
        sweep = ", ".join(f"np{r['np']}={r['output_tok_s']:.1f}" for r in t if "error" not in r and r.get("rep") == 0)
        if len([r for r in t if r.get("rep") == 0]) < 2:
            sweep = ""  # no sweep for this model: -np came from the first model's
        desc = f"{args.offline_prompts}x{args.offline_in}/{args.offline_out}"
        add("offline_output_tok_s", f"offline output tok/s ({desc}; np {best})",
            med(o, "output_tok_s"), med(t, "output_tok_s", at_best))
        add("offline_total_tok_s", "  total tok/s", med(o, "total_tok_s"), med(t, "total_tok_s", at_best))
        add("offline_req_s", "  req/s", med(o, "requests_per_s"), med(t, "requests_per_s", at_best), 2)
        add("rss_offline_mib", "  peak RSS MiB (throughput / llama-server)", peak(o),
            peak([r for r in t if r.get("np") == best]), 0)
        h = off.get("ferrollm-http", [])
        if h:
            add("offline_http_output_tok_s", "  ferrollm serve (same HTTP load) output tok/s",
                med(h, "output_tok_s"), med(t, "output_tok_s", at_best))
        s["llama_server_sweep"] = sweep
    return rows, s


def print_model_table(args, key, path, rows, s):
    print()
    print(f"== {key}: {os.path.basename(path)} ==")
    head = f"metric (median; {args.reps} latency / {args.heavy_reps} other reps)"
    print(f"{head:<52}{'ferrollm':>11}{'llama.cpp':>11}{'ratio':>7}")
    print("-" * 81)
    for label, o, t, r in rows:
        print(f"{label:<52}{o:>11}{t:>11}{r:>7}")
    if s.get("llama_server_sweep"):
        print(f"  llama-server sweep (rep 1, output tok/s): {s['llama_server_sweep']}")


def print_summary(args, summaries):
    cols = [("decode_tok_s", "b1 dec"), ("prefill_tok_s", "pp" + str(args.prefill_len))]
    cols += [(f"decode_tok_s_b{b}", f"b{b} dec") for b in args.batch_sizes]
    cols += [("offline_output_tok_s", "offline")]
    print()
    print("ratios ferrollm / llama.cpp (>1: ferrollm faster)")
    print(f"{'model':<22}" + "".join(f"{c:>10}" for _, c in cols) + f"{'GB/s ours/theirs':>20}")
    for key, s in summaries.items():
        cells = "".join(f"{fmt((s.get(k) or {}).get('ratio'), 2):>10}" for k, _ in cols)
        g = s.get("effective_gb_s") or {}
        print(f"{key:<22}{cells}{fmt(g.get('ferrollm'), 2) + ' / ' + fmt(g.get('llama.cpp'), 2):>20}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def c_probe(args, source, flags, run_args, pattern):
    """Compiles and runs scripts/bench/SOURCE (measure.compile_and_run); returns {threads: figure}
    from the output lines matching PATTERN (threads, figure), or {} if gcc fails."""
    print(f"    $ gcc {' '.join(flags)} {source} && ./{os.path.splitext(source)[0]} {' '.join(run_args)}", flush=True)
    ok, text = compile_and_run(os.path.join(HERE, source), flags, run_args, args.work)
    print("  " + (text if ok else f"({text})").replace("\n", "\n  "))
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(pattern, text)} if ok else {}


def probe_threads(args):
    return "1" if args.threads == 1 else f"1,{args.threads}"


def bandwidth_probe(args):
    """Streaming read bandwidth (bandwidth.c): {threads: GB/s}."""
    return c_probe(args, "bandwidth.c", ["-O3", "-mavx2", "-fopenmp"],
                   [str(args.bandwidth_mib), "5", probe_threads(args)],
                   r"read bandwidth, (\d+) threads?: ([\d.]+) GB/s")


def fma_probe(args):
    """f32 FMA peak (fma_peak.c): {threads: GFLOP/s}, the ceiling for prefill with float
    weights, which AVX2 multiplies in f32."""
    return c_probe(args, "fma_peak.c", ["-O2", "-mavx2", "-mfma", "-fopenmp"], [probe_threads(args)],
                   r"fma peak, (\d+) thread\(s\): ([\d.]+) GFLOP/s")


def print_header(args):
    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
    info = os.path.join(args.llama_bin, "BUILD_INFO")
    llama = open(info).read().splitlines()[1] if os.path.exists(info) else args.llama_bin
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(args.ferrollm)))
    print(f"ferrollm: {args.ferrollm} (built {built}; this script's tree {rev.stdout.strip() or 'unknown'})")
    print(f"llama.cpp: {args.llama_bin} ({llama})")
    if args.avx2_only:
        print("AVX2 only: ferrollm with FERROLLM_NO_AVX512=1 FERROLLM_NO_VNNI=1, llama.cpp built for AVX2+FMA+F16C")
    print(f"threads {args.threads} · reps {args.reps} (batched, offline: {args.heavy_reps}) · iters {args.iters} "
          f"(batched: {args.batched_iters}) · KV f16 both · llama.cpp flash-attn "
          f"{args.llama_flash_attn} · workloads {','.join(args.workloads)}")
    print(f"models: {', '.join(k for k, _ in args.models)}")
    load = os.getloadavg()
    busy = load[0] > 0.5 * (os.cpu_count() or 1)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
          + ("  (busy machine: figures will be noisy)" if busy else ""), flush=True)


def write_json(args, bw, fma, all_runs, summaries, elapsed):
    def plain(v):
        return v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else str(v)

    with open(args.output_json, "w") as f:
        json.dump({"args": {k: plain(v) for k, v in vars(args).items()}, "bandwidth_gb_s": bw,
                   "fma_peak_gflop_s": fma, "summary": summaries, "runs": all_runs, "elapsed_s": elapsed}, f, indent=2)
    print(f"results written to {args.output_json}")


def main(argv):
    args = parse_args(argv)
    check_inputs(args)
    tmp = None if args.keep_dir else tempfile.TemporaryDirectory(prefix="kernels_compare.")
    args.work = args.keep_dir or tmp.name
    args.fixed_np = None  # llama-server -np once the first model's sweep has picked it
    os.makedirs(args.work, exist_ok=True)
    t_all = time.perf_counter()
    print_header(args)
    bw = {} if args.no_bandwidth else bandwidth_probe(args)
    fma = {} if args.no_bandwidth else fma_probe(args)
    all_runs, summaries = {}, {}
    for index, (key, path) in enumerate(args.models):
        print(f"\n[{key}] {path}", flush=True)
        t0 = time.perf_counter()
        all_runs[key] = run_model(args, index, key, path)
        rows, summaries[key] = summarize_model(args, key, path, all_runs[key], bw, fma)
        if not args.sweep_each_model and args.fixed_np is None:
            args.fixed_np = pick_np(all_runs[key])
        print_model_table(args, key, path, rows, summaries[key])
        print(f"({key}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print_summary(args, summaries)
    failed = [(k, wl, side, r["error"].splitlines()[0]) for k, m in all_runs.items() for wl, sides in m.items()
              for side, rs in sides.items() for r in rs if "error" in r]
    for k, wl, side, e in failed:
        print(f"FAILED: {k} {wl} {side}: {e}")
    elapsed = time.perf_counter() - t_all
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} · total {elapsed:.0f} s")
    if args.keep_dir:
        print(f"logs and raw JSON: {args.keep_dir}")
    if args.output_json:
        write_json(args, bw, fma, all_runs, summaries, elapsed)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
