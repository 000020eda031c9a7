#!/usr/bin/env python3
"""Reference fixtures from llama.cpp (via llama-cpp-python) for a GGUF model.

Usage:
    python scripts/ref/gen_llamacpp_fixtures.py MODEL.gguf OUT.json [--top-k 64] [--n-threads 2]

For each prompt in PROMPTS below this records:
  * the token ids llama.cpp produces (BOS added only if the GGUF metadata says
    tokenizer.ggml.add_bos_token is true; special tokens parsed only for prompts
    marked parse_special),
  * for every position i, the top-k log-probabilities (log-softmax over the full
    vocabulary, computed in float64 from llama.cpp's float32 logits) of the
    token that follows tokens[0..=i], as [token_id, logprob] pairs sorted by
    descending logprob (ties by ascending id), rounded to 5 decimals.

Plus greedy decoding (argmax, no sampler) of up to 16 tokens for a few prompts,
with each step's chosen id, its logprob and the step's top-8.

The whole prompt is evaluated in one llama_decode call per n_batch (512) with
logits for every position (logits_all=True); the KV cache is cleared between
prompts.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np

# ---------------------------------------------------------------------------
# The committed prompt set. Do not edit casually: fixtures depend on it.
# ---------------------------------------------------------------------------
PROMPTS = [
    {
        "name": "prose_short",
        "text": "The capital of France is Paris. It is known for the Eiffel Tower, "
        "the Louvre museum, and its cafes along the river Seine.",
    },
    {
        "name": "prose_long",
        "text": (
            "Once upon a time, in a small village nestled between rolling hills and a "
            "quiet forest, there lived an old clockmaker named Elias. Every morning he "
            "opened the wooden shutters of his workshop, brewed a pot of strong black "
            "tea, and sat down at a bench covered with tiny gears, springs and screws. "
            "The villagers said that his clocks never lost a second, not in summer heat "
            "nor in the bitter cold of winter. Children would press their noses against "
            "the window to watch him work, and he would sometimes wave them inside to "
            "show them how a balance wheel swings back and forth, counting out time like "
            "a heartbeat. One autumn evening a stranger arrived in the village carrying "
            "a broken pocket watch wrapped in a faded silk handkerchief. The watch had "
            "belonged to his grandmother, he explained, and no one in the city had been "
            "able to repair it. Elias turned it over in his hands, opened the back with "
            "a thin blade, and frowned at the rust that had crept across the movement. "
            "\"This will take time,\" he said, \"but time is the one thing I understand.\" "
            "He worked through the night by the light of an oil lamp, cleaning each part, "
            "straightening a bent pivot, and cutting a new spring from a strip of steel. "
            "When the sun rose, the watch was ticking again, steady and sure."
        ),
    },
    {
        "name": "code_python",
        "text": (
            "def fibonacci(n):\n"
            "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
            "    a, b = 0, 1\n"
            "    for _ in range(n):\n"
            "        a, b = b, a + b\n"
            "    return a\n"
            "\n"
            "\n"
            "if __name__ == \"__main__\":\n"
            "    for i in range(10):\n"
            "        print(i, fibonacci(i))\n"
        ),
    },
    {
        "name": "code_rust",
        "text": (
            "use std::collections::HashMap;\n\n"
            "fn word_counts(text: &str) -> HashMap<&str, usize> {\n"
            "    let mut counts = HashMap::new();\n"
            "    for word in text.split_whitespace() {\n"
            "        *counts.entry(word).or_insert(0) += 1;\n"
            "    }\n"
            "    counts\n"
            "}\n\n"
            "fn main() {\n"
            "    let c = word_counts(\"a b a c b a\");\n"
            "    println!(\"{:?}\", c.get(\"a\"));\n"
            "}\n"
        ),
    },
    {
        "name": "list",
        "text": (
            "Shopping list:\n"
            "1. Eggs (a dozen)\n"
            "2. Whole milk, 2 liters\n"
            "3. Sourdough bread\n"
            "4. Tomatoes\n"
            "5. Olive oil\n"
            "- apples\n"
            "- bananas\n"
            "- oranges\n"
            "* Remember: pay the electricity bill by Friday!\n"
        ),
    },
    {
        "name": "chat_chatml",
        "parse_special": True,
        "text": (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is the boiling point of water at sea level, in Celsius?<|im_end|>\n"
            "<|im_start|>assistant\nWater boils at 100 degrees Celsius at sea level.<|im_end|>\n"
            "<|im_start|>user\nAnd in Fahrenheit?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
    {
        "name": "numbers",
        "text": (
            "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20. "
            "3.14159265358979 2.71828 1,000,000 -42 0x1F 1e-9 12345678901234567890 "
            "2024-03-15 23:59:59 $19.99 75% 1/3"
        ),
    },
    {
        "name": "non_ascii_european",
        "text": (
            "Größe, Straße und Übermut. Ça va très bien, merci ! "
            "El niño comió piñata. Здравствуй, мир! Καλημέρα κόσμε. "
            "Zażółć gęślą jaźń. naïve café — résumé…"
        ),
    },
    {
        "name": "non_ascii_cjk_emoji",
        "text": (
            "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다. "
            "I love pizza 🍕 and rockets 🚀! 😀😂👍🏽 👨‍👩‍👧‍👦 ❤️ ✓ ∑ ∞ → ½ ™"
        ),
    },
    {
        "name": "repeated",
        "text": "the cat sat on the mat. " * 12 + "hello hello hello hello hello hello world world world",
    },
    {
        "name": "whitespace_mixed",
        "text": "  leading spaces\n\n\ttab\tseparated\tvalues\n   \n trailing   \r\nwindows line end\n\n\n",
    },
    {
        "name": "json_like",
        "text": (
            '{"name": "ferrollm", "version": "0.1.0", "features": ["paged-kv", "prefix-cache"], '
            '"limits": {"max_tokens": 4096, "temperature": 0.7}, "ok": true, "none": null}'
        ),
    },
    {
        "name": "single_word",
        "text": "Hello",
    },
    {
        "name": "code_c",
        "text": (
            "#include <stdio.h>\n#include <stdlib.h>\n\n"
            "/* Sum the first n squares, checking for overflow. */\n"
            "static long sum_squares(int n) {\n"
            "    long total = 0;\n"
            "    for (int i = 1; i <= n; ++i) {\n"
            "        if (total > 9223372036854775807L - (long)i * i) {\n"
            "            fprintf(stderr, \"overflow at %d\\n\", i);\n"
            "            exit(1);\n"
            "        }\n"
            "        total += (long)i * i;\n"
            "    }\n"
            "    return total;\n"
            "}\n\n"
            "int main(int argc, char **argv) {\n"
            "    int n = argc > 1 ? atoi(argv[1]) : 10;\n"
            "    printf(\"%ld\\n\", sum_squares(n));\n"
            "    return 0;\n"
            "}\n"
        ),
    },
    {
        "name": "markdown",
        "text": (
            "## Results\n\n"
            "| Model | Params | Tokens/s |\n"
            "|-------|-------:|---------:|\n"
            "| tiny  | 135M   | 48.2     |\n"
            "| small | 0.5B   | 17.9     |\n\n"
            "> **Note:** numbers are _approximate_; see `bench.md` for details.\n"
        ),
    },
]

GREEDY_PROMPTS = [
    {"name": "france", "text": "The capital of France is"},
    {"name": "fibonacci", "text": "def fibonacci(n):\n"},
    {"name": "counting", "text": "Monday, Tuesday, Wednesday,"},
]
GREEDY_TOKENS = 16


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_softmax(logits):
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return x - lse


def top_k_pairs(lp_row, k):
    # Exact top-k, sorted by descending logprob then ascending id.
    k = min(k, lp_row.shape[0])
    kth = -np.partition(-lp_row, k - 1)[k - 1]
    idx = np.nonzero(lp_row >= kth)[0]  # includes anything tied with the k-th value
    order = sorted(idx.tolist(), key=lambda t: (-lp_row[t], t))[:k]
    return [[int(t), round(float(lp_row[t]), 5)] for t in order]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--n-threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    t0 = time.time()
    llm = Llama(
        model_path=args.model,
        logits_all=True,
        n_ctx=args.n_ctx,
        n_batch=512,
        n_threads=args.n_threads,
        n_threads_batch=args.n_threads,
        seed=0,
        verbose=False,
    )
    md = llm.metadata
    add_bos_md = md.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
    add_bos_api = bool(llm._model.add_bos_token())
    assert add_bos_md == add_bos_api, (add_bos_md, add_bos_api)
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()

    def tokenize(text, special):
        # llama_tokenize(add_special=True) adds BOS only when the vocab says so.
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    def eval_logprobs(ids):
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids), :], dtype=np.float32)
        return log_softmax(logits)

    prompts_out = []
    n_positions = 0
    for p in PROMPTS:
        special = bool(p.get("parse_special", False))
        ids = tokenize(p["text"], special)
        lp = eval_logprobs(ids)
        tops = [top_k_pairs(lp[i], args.top_k) for i in range(len(ids))]
        n_positions += len(ids)
        roundtrip = llm.detokenize(ids, special=special).decode("utf-8", errors="replace")
        prompts_out.append(
            {
                "name": p["name"],
                "text": p["text"],
                "parse_special": special,
                "token_ids": [int(t) for t in ids],
                "detokenized": roundtrip,
                "top_logprobs": tops,
            }
        )
        print(f"  {p['name']}: {len(ids)} tokens", file=sys.stderr)

    greedy_out = []
    for g in GREEDY_PROMPTS:
        ids = tokenize(g["text"], False)
        llm.reset()
        llm.eval(ids)
        gen = []
        steps = []
        stopped_eog = False
        for _ in range(GREEDY_TOKENS):
            row = np.array(llm.scores[llm.n_tokens - 1, :], dtype=np.float32)
            lp = log_softmax(row[None, :])[0]
            tok = int(np.argmax(row))
            gen.append(tok)
            steps.append({"token_id": tok, "logprob": round(float(lp[tok]), 5), "top": top_k_pairs(lp, 8)})
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                stopped_eog = True
                break
            llm.eval([tok])
        greedy_out.append(
            {
                "name": g["name"],
                "prompt": g["text"],
                "prompt_token_ids": [int(t) for t in ids],
                "generated_token_ids": gen,
                "generated_text": llm.detokenize(gen, prev_tokens=ids).decode("utf-8", errors="replace"),
                "stopped_at_eog": stopped_eog,
                "steps": steps,
            }
        )
        print(f"  greedy {g['name']}: {llm.detokenize(gen, prev_tokens=ids)!r}", file=sys.stderr)

    elapsed = time.time() - t0
    out = {
        "format": "ferrollm-llamacpp-fixture-v1",
        "generator": "scripts/ref/gen_llamacpp_fixtures.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "architecture": md.get("general.architecture"),
        "n_vocab": int(n_vocab),
        "add_bos_token": add_bos_md,
        "bos_token_id": int(llm.token_bos()),
        "eos_token_id": int(llm.token_eos()),
        "n_threads": args.n_threads,
        "n_ctx": args.n_ctx,
        "n_batch": 512,
        "top_k": args.top_k,
        "logprob_decimals": 5,
        "notes": (
            "top_logprobs[i] is the distribution over the token after token_ids[0..=i]: "
            "log_softmax of llama.cpp float32 logits, computed in float64. Whole prompt "
            "evaluated in one batch; KV cache cleared between prompts. Greedy = argmax of "
            "logits, one token per llama_decode after the prompt."
        ),
        "total_positions": n_positions,
        "prompts": prompts_out,
        "greedy": greedy_out,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(
        f"wrote {args.out}: {n_positions} positions, {os.path.getsize(args.out)/1e6:.2f} MB, {elapsed:.1f}s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
