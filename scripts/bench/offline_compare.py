#!/opt/ref-venv/bin/python
"""Offline speed of ferrollm against llama.cpp (through llama-cpp-python) on one GGUF file.

Run with the reference venv, from the repository root:

    /opt/ref-venv/bin/python scripts/bench/offline_compare.py [MODEL.gguf] [--reps 3] [--threads 2]

Three workloads, each measured the same way on both sides, with the same thread count:

  latency-512   prefill of one 512-token prompt (tok/s), then batch-1 decode of 128 tokens
                after it (tok/s, context 512..640)
                ours:   ferrollm bench latency --input-len 512 --output-len 128
                theirs: llama_decode of the 512 tokens in one batch (n_batch=512), then
                        single-token llama_decode calls with greedy argmax
  latency-16    batch-1 decode of 128 tokens after a 16-token prompt (tok/s)
                ours:   ferrollm bench latency --input-len 16 --output-len 128 --batch-size 1
  throughput    64 requests of 128 random prompt tokens and 128 output tokens, all at once
                ours:   ferrollm bench throughput --num-prompts 64 --input-len 128 --output-len 128
                theirs: llama.cpp's own multi-sequence batching through the low-level API
                        (64 sequences, one KV stream each, prompts prefilled 512 tokens per
                        llama_decode, then one 64-token llama_decode per step) -- what
                        llama-server does with 64 parallel slots. --llama-sequential runs the
                        64 requests one after another instead (labelled as such).

Each run is a fresh process (ours and theirs alternate, --reps each); the table shows medians
and ferrollm/llama.cpp ratios (>1 means ferrollm is faster), and the peak RSS of each process
(wait4's ru_maxrss; the llama.cpp worker also reports its own VmHWM). Within one run both sides
do 1 warm-up iteration and take the median of --iters iterations (ferrollm's --num-iters).
Prompts are random token ids in [1000, 30000), fresh each iteration; generation ignores EOS.

It also compiles and runs scripts/bench/bandwidth.c (gcc -O3 -mavx2 -fopenmp) for the
machine's streaming read bandwidth with 1 and --threads threads (skip with --no-bandwidth).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from measure import compile_and_run, run_measured

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.expanduser("~/.cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf")


# --------------------------------------------------------------------------------------------
# llama.cpp worker (runs in its own process: `offline_compare.py --worker KIND ...`)
# --------------------------------------------------------------------------------------------


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class LlamaRunner:
    """A llama.cpp model and context driven through the low-level C API."""

    def __init__(self, model_path, threads, n_ctx, n_batch, n_seq_max=1):
        import numpy as np
        import llama_cpp as L

        self.np, self.L = np, L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(model_path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = min(n_batch, 512)
        cp.n_seq_max = n_seq_max
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.no_perf = True
        # One KV stream per sequence, so a sequence attends over its own cells only (what
        # llama-server and llama-batched-bench do by default).
        cp.kv_unified = False
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.mem = L.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, 1)

    def clear(self):
        self.L.llama_memory_clear(self.mem, True)

    def decode(self, items):
        """items: (token, pos, seq, wants_logits) tuples, at most n_batch."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if want else 0
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax_ith(self, i):
        ptr = self.L.llama_get_logits_ith(self.ctx, i)
        return int(self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def argmax_all(self, n_out):
        ptr = self.L.llama_get_logits(self.ctx)
        return self.np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).argmax(axis=1).tolist()

    def random_prompt(self, rng, n):
        hi = max(1001, min(self.n_vocab, 30000))
        return [rng.randrange(1000, hi) for _ in range(n)]


def worker_latency(args):
    import random

    r = LlamaRunner(args.model, args.threads, n_ctx=max(1024, args.input_len + args.output_len + 64), n_batch=512)
    rng = random.Random(args.seed)
    prefill, decode, total = [], [], []
    for it in range(1 + args.iters):
        r.clear()
        prompt = r.random_prompt(rng, args.input_len)
        t0 = time.perf_counter()
        for s in range(0, len(prompt), r.n_batch):
            chunk = prompt[s:s + r.n_batch]
            last = s + len(chunk) == len(prompt)
            r.decode([(t, s + i, 0, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        tok = r.argmax_ith(-1)
        t1 = time.perf_counter()
        pos = len(prompt)
        for _ in range(args.output_len - 1):
            r.decode([(tok, pos, 0, True)])
            tok = r.argmax_ith(-1)
            pos += 1
        t2 = time.perf_counter()
        if it == 0:
            continue
        prefill.append(len(prompt) / (t1 - t0))
        decode.append((args.output_len - 1) / (t2 - t1))
        total.append(t2 - t0)
    return {"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode),
            "latency_s": statistics.median(total), "mode": "batch-1"}


def worker_throughput(args):
    import random

    n, lin, lout = args.num_prompts, args.input_len, args.output_len
    rng = random.Random(args.seed)
    if args.sequential:
        r = LlamaRunner(args.model, args.threads, n_ctx=max(512, lin + lout + 64), n_batch=512)
        prompts = [r.random_prompt(rng, lin) for _ in range(n)]
        t0 = time.perf_counter()
        for p in prompts:
            r.clear()
            for s in range(0, lin, r.n_batch):
                chunk = p[s:s + r.n_batch]
                last = s + len(chunk) == lin
                r.decode([(t, s + i, 0, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
            tok = r.argmax_ith(-1)
            for pos in range(lin, lin + lout - 1):
                r.decode([(tok, pos, 0, True)])
                tok = r.argmax_ith(-1)
        secs = time.perf_counter() - t0
        mode = "sequential (one request at a time)"
    else:
        per_seq = -(-(lin + lout) // 256) * 256
        r = LlamaRunner(args.model, args.threads, n_ctx=n * per_seq, n_batch=512, n_seq_max=n)
        prompts = [r.random_prompt(rng, lin) for _ in range(n)]
        # Prefill every prompt, packing the flat token stream into n_batch-token decode calls.
        flat = [(t, i, seq, i == lin - 1) for seq, p in enumerate(prompts) for i, t in enumerate(p)]
        nxt = [0] * n
        t0 = time.perf_counter()
        for s in range(0, len(flat), r.n_batch):
            chunk = flat[s:s + r.n_batch]
            r.decode(chunk)
            for bi, (_, _, seq, want) in enumerate(chunk):
                if want:
                    nxt[seq] = r.argmax_ith(bi)
        # Decode: one token per sequence per step, all sequences in one llama_decode.
        for step in range(lout - 1):
            pos = lin + step
            for c in range(0, n, r.n_batch):
                seqs = range(c, min(n, c + r.n_batch))
                r.decode([(nxt[q], pos, q, True) for q in seqs])
                for q, t in zip(seqs, r.argmax_all(len(seqs))):
                    nxt[q] = t
        secs = time.perf_counter() - t0
        mode = "batched (llama_decode over all sequences)"
    gen = n * lout
    return {"requests_per_s": n / secs, "total_tok_s": (n * lin + gen) / secs, "output_tok_s": gen / secs,
            "elapsed_s": secs, "mode": mode}


def worker_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["latency", "throughput"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sequential", action="store_true")
    args = ap.parse_args(argv)
    res = worker_latency(args) if args.worker == "latency" else worker_throughput(args)
    res["vm_hwm_kib"] = vm_hwm_kib()
    print("RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def run_ours(args, kind):
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    common = ["--model", args.model, "--threads", str(args.threads), "--output-json", path]
    if kind == "latency-512":
        cmd = [args.bin, "bench", "latency", "--input-len", str(args.prefill_len), "--output-len",
               str(args.output_len), "--batch-size", "1", "--num-iters", str(args.iters),
               "--num-iters-warmup", "1"] + common
    elif kind == "latency-16":
        cmd = [args.bin, "bench", "latency", "--input-len", str(args.short_len), "--output-len",
               str(args.output_len), "--batch-size", "1", "--num-iters", str(args.iters),
               "--num-iters-warmup", "1"] + common
    else:
        cmd = [args.bin, "bench", "throughput", "--num-prompts", str(args.num_prompts), "--input-len",
               str(args.tput_input_len), "--output-len", str(args.tput_output_len)] + common
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    rc, out, err, rss, secs = run_measured(cmd, env=env, timeout=args.timeout)
    try:
        if rc != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{err[-2000:]}")
        with open(path) as f:
            res = json.load(f)
    finally:
        os.unlink(path)
    res["rss_kib"] = rss
    return res


def run_theirs(args, kind):
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--threads", str(args.threads),
           "--iters", str(args.iters)]
    if kind == "latency-512":
        cmd += ["--worker", "latency", "--input-len", str(args.prefill_len), "--output-len", str(args.output_len)]
    elif kind == "latency-16":
        cmd += ["--worker", "latency", "--input-len", str(args.short_len), "--output-len", str(args.output_len)]
    else:
        cmd += ["--worker", "throughput", "--num-prompts", str(args.num_prompts), "--input-len",
                str(args.tput_input_len), "--output-len", str(args.tput_output_len)]
        if args.llama_sequential:
            cmd.append("--sequential")
    rc, out, err, rss, secs = run_measured(cmd, timeout=args.timeout)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    if rc != 0 or not lines:
        raise RuntimeError(f"llama.cpp worker ({kind}) exited {rc}:\n{err[-2000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["rss_kib"] = rss
    return res


def bandwidth(threads):
    with tempfile.TemporaryDirectory() as d:
        ok, text = compile_and_run(os.path.join(HERE, "bandwidth.c"), ["-O3", "-mavx2", "-fopenmp"],
                                   ["1024", "5", "1" if threads == 1 else f"1,{threads}"], d, timeout=300)
        return text if ok else f"({text})"


METRICS = {
    "latency-512": [("prefill_tok_s", "prefill tok/s ({p} tokens)"), ("decode_tok_s", "decode tok/s (batch 1, after {p})")],
    "latency-16": [("decode_tok_s", "decode tok/s (batch 1, after {s})")],
    "throughput": [("output_tok_s", "throughput output tok/s ({n}x{ti}/{to})"),
                   ("total_tok_s", "throughput total tok/s"), ("requests_per_s", "throughput req/s")],
}


def main():
    if "--worker" in sys.argv:
        return worker_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="GGUF file")
    ap.add_argument("--bin", default=os.environ.get("FERROLLM_BIN", os.path.join(ROOT, "target/release/ferrollm")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="runs of each side per workload")
    ap.add_argument("--iters", type=int, default=3, help="measured iterations inside one latency run")
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--short-len", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--tput-input-len", type=int, default=128)
    ap.add_argument("--tput-output-len", type=int, default=128)
    ap.add_argument("--llama-sequential", action="store_true",
                    help="llama.cpp throughput as 64 sequential requests instead of one batch")
    ap.add_argument("--workloads", default="latency-512,latency-16,throughput")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    ap.add_argument("--no-bandwidth", action="store_true")
    ap.add_argument("--output-json", help="write every run's results here")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        sys.exit(f"no such model file: {args.model}")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"ferrollm binary not found at {args.bin} (cargo build --release -p ferrollm-cli, or set FERROLLM_BIN)")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in METRICS:
            sys.exit(f"unknown workload {w}; choose from {', '.join(METRICS)}")

    print(f"model: {args.model}")
    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
    import llama_cpp

    print(f"ferrollm: {args.bin} (tree {rev.stdout.strip() or 'unknown'}); llama-cpp-python {llama_cpp.__version__}")
    print(f"threads: {args.threads} · reps: {args.reps} · iterations per latency run: {args.iters}")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
          + ("  (busy machine: figures will be noisy)" if load[0] > 0.5 * (os.cpu_count() or 1) else ""))
    if not args.no_bandwidth:
        print(bandwidth(args.threads))
    sys.stdout.flush()

    runs = {w: {"ferrollm": [], "llama.cpp": []} for w in workloads}
    for rep in range(args.reps):
        for w in workloads:
            order = [("ferrollm", run_ours), ("llama.cpp", run_theirs)]
            if rep % 2 == 1:
                order.reverse()
            for name, fn in order:
                t0 = time.perf_counter()
                res = fn(args, w)
                runs[w][name].append(res)
                keys = ", ".join(f"{k}={res[k]:.1f}" for k, _ in METRICS[w])
                print(f"  rep {rep + 1} {w:<12} {name:<10} {keys}  rss={res['rss_kib'] / 1024:.0f} MiB"
                      f"  ({time.perf_counter() - t0:.1f} s)", flush=True)

    fmt = dict(p=args.prefill_len, s=args.short_len, n=args.num_prompts, ti=args.tput_input_len,
               to=args.tput_output_len)
    print()
    print(f"{'metric (median of ' + str(args.reps) + ')':<44}{'ferrollm':>12}{'llama.cpp':>12}{'ratio':>8}")
    print("-" * 76)
    summary = {}
    for w in workloads:
        for key, label in METRICS[w]:
            ours = statistics.median(r[key] for r in runs[w]["ferrollm"])
            theirs = statistics.median(r[key] for r in runs[w]["llama.cpp"])
            summary[f"{w}.{key}"] = {"ferrollm": ours, "llama.cpp": theirs, "ratio": ours / theirs}
            print(f"{label.format(**fmt):<44}{ours:>12.1f}{theirs:>12.1f}{ours / theirs:>8.2f}")
        rss_o = max(r["rss_kib"] for r in runs[w]["ferrollm"]) / 1024
        rss_t = max(r["rss_kib"] for r in runs[w]["llama.cpp"]) / 1024
        print(f"{'  peak RSS MiB (' + w + ')':<44}{rss_o:>12.0f}{rss_t:>12.0f}{rss_o / rss_t:>8.2f}")
    if "throughput" in workloads:
        print(f"\nllama.cpp throughput mode: {runs['throughput']['llama.cpp'][0]['mode']}")
    print("ratio = ferrollm / llama.cpp (for tok/s, >1 means ferrollm is faster; for RSS, >1 means it uses more)")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
