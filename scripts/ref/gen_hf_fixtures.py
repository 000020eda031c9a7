#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models plus transformers reference logits.

Usage:
    python scripts/ref/gen_hf_fixtures.py [OUT_DIR]      # default tests/fixtures/hf

Creates, deterministically (fixed seeds, CPU, float32):

  OUT_DIR/tiny-llama/     LlamaForCausalLM, untied lm_head, tokenizer adds a BOS
  OUT_DIR/tiny-qwen2/     Qwen2ForCausalLM, q/k/v biases, tied embeddings, no BOS
  OUT_DIR/tiny-*-bf16/    same weights rounded to bfloat16, stored as bf16
  OUT_DIR/tiny-*-f16/     same weights rounded to float16, stored as f16

Both: hidden 64, 2 layers, 4 heads, 2 KV heads (head_dim 16), intermediate 160,
vocab 512, rope_theta 10000, rms_norm_eps 1e-5, max_position_embeddings 256.

Every directory holds config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (with a ChatML chat_template), generation_config.json, and
logits.json: [{"name", "input_ids", "logits": [[512 floats] per position]}]
(float32 logits from transformers, eager attention, rounded to 6 decimals).
The f32 directories also hold greedy.json (greedy generations) and
tokenizer_cases.json (text -> ids from the `tokenizers` library).

Logits of the bf16/f16 directories are computed in float32 from the rounded
weights (weights upcast to f32), which is what an engine that loads bf16/f16
and computes in f32 should reproduce.

Weights are not transformers' default init (std 0.02, norms = 1, biases = 0,
which gives near-uniform outputs): every matrix/embedding is N(0, 0.1^2),
every RMSNorm weight is 1 + N(0, 0.1^2) and every bias is N(0, 0.1^2), so that
a wrong norm weight, a missing bias or a wrong RoPE layout changes the logits
visibly.

Each tokenizer is a 512-token byte-level BPE trained with the `tokenizers`
library on scripts/ref/data/bpe_corpus.txt: tiny-llama's with Llama 3's
pre-tokenizer regex and a BOS post-processor, tiny-qwen2's with Qwen2's regex
and NFC normalizer, no BOS (transformers 5 rebuilds a qwen2 directory's
pre-tokenizer from its own Qwen2Tokenizer class, so the file must match it).
The script checks that the saved tokenizer.json gives the same ids through
`tokenizers` and through transformers' AutoTokenizer.
"""

import copy
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CORPUS = os.path.join(HERE, "data", "bpe_corpus.txt")

VOCAB = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SEED = 1234
INIT_STD = 0.1

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    hidden_act="silu",
)

TEXTS = {
    "text_prose": "The capital of France is Paris. Once upon a time there was a small village by the sea.",
    "text_code": "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n",
    "text_unicode": "Größe café 東京 🍕 — naïve?",
}
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


# Pre-tokenizer regexes of the real families (Llama 3 groups up to 3 digits,
# Qwen2 splits every digit); both then map bytes with ByteLevel(use_regex=False).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tokenizer(kind):
    """tiny-llama: Llama-3 style (regex with digit groups of 1-3, BOS added by a
    TemplateProcessing post-processor). tiny-qwen2: Qwen2 style (NFC
    normalizer, single-digit regex, no BOS), as transformers' Qwen2Tokenizer
    builds it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    regex = LLAMA3_REGEX if kind == "llama" else QWEN2_REGEX
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=1,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer)
    if tok.get_vocab_size() != VOCAB:
        raise SystemExit(f"trained vocab has {tok.get_vocab_size()} tokens, wanted {VOCAB}: grow the corpus")
    if kind == "llama":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def make_hf_tokenizer(tok, with_bos):
    from transformers import PreTrainedTokenizerFast

    kw = dict(
        tokenizer_object=tok,
        eos_token="<|im_end|>" if not with_bos else "<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    if with_bos:
        kw["bos_token"] = "<|begin_of_text|>"
    return PreTrainedTokenizerFast(**kw)


def randomize(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * INIT_STD
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def round6(a):
    return [[round(float(x), 6) for x in row] for row in a]


def sequences(tok, with_bos, hf_tok, seed):
    rng = np.random.default_rng(seed)
    seqs = []
    for n in (1, 2, 5, 16, 33, 64):
        seqs.append({"name": f"random_{n}", "input_ids": rng.integers(0, VOCAB, size=n).tolist()})
    for name, text in TEXTS.items():
        ids = tok.encode(text).ids
        seqs.append({"name": name, "text": text, "input_ids": ids})
    chat = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(chat).ids
    seqs.append({"name": "chat", "text": chat, "input_ids": ids})
    for s in seqs:
        assert 1 <= len(s["input_ids"]) <= 64 * 2, (s["name"], len(s["input_ids"]))
    return seqs


def compute_logits(model, seqs):
    import torch

    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s["input_ids"]], dtype=torch.long)
            logits = model(input_ids=ids).logits[0].float().numpy()
            e = dict(s)
            e["logits"] = round6(logits)
            out.append(e)
    return out


def greedy(model, tok, seqs, n_new=12):
    """Pure argmax decoding (no EOS stop, no logits processors): full forward
    over the growing sequence each step."""
    import torch

    res = []
    with torch.no_grad():
        for s in seqs:
            ids = list(s["input_ids"])
            new = []
            for _ in range(n_new):
                logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0, -1]
                t = int(torch.argmax(logits))
                new.append(t)
                ids.append(t)
            res.append({"name": s["name"], "input_ids": s["input_ids"], "generated_ids": new,
                        "generated_text": tok.decode(new, skip_special_tokens=False)})
    return res


def write_json(path, obj, compact=True):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def fix_config(path, rope_theta):
    """Keep transformers' config, but add the keys transformers 4 wrote and
    most configs in the wild carry: a top-level rope_theta (transformers 5
    writes only rope_parameters) and torch_dtype (5 writes dtype)."""
    with open(path) as f:
        cfg = json.load(f)
    cfg.setdefault("rope_theta", rope_theta)
    if "dtype" in cfg:
        cfg.setdefault("torch_dtype", cfg["dtype"])
    write_json(path, cfg, compact=False)
    return cfg


def fix_tokenizer_config(d, keep_jinja_file):
    """transformers 5 writes the template to chat_template.jinja and names its
    own tokenizer class; put the template into tokenizer_config.json and use
    the class name transformers 4 wrote, as most HF directories have."""
    path = os.path.join(d, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    write_json(path, cfg, compact=False)
    jinja = os.path.join(d, "chat_template.jinja")
    if os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            assert f.read() == CHAT_TEMPLATE
        if not keep_jinja_file:
            os.remove(jinja)


def check_tokenizer_roundtrip(d, hf_tok, with_bos):
    """The saved directory must load back with AutoTokenizer and give the same
    ids and chat rendering as the in-memory tokenizer."""
    from transformers import AutoTokenizer

    from tokenizers import Tokenizer

    t2 = AutoTokenizer.from_pretrained(d)
    t3 = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for text in list(TEXTS.values()) + ["x = 12345 + 67", "IT'S 'll"]:
        a = hf_tok(text)["input_ids"]
        b = t2(text)["input_ids"]
        c = t3.encode(text).ids
        assert a == b == c, (d, type(t2).__name__, a, b, c)
        assert (a[0] == hf_tok.convert_tokens_to_ids("<|begin_of_text|>")) == with_bos, (d, a[:3])
    r1 = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    r2 = t2.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert r1 == r2, (r1, r2)


def build(kind, out_dir, versions):
    import torch
    import transformers
    from safetensors.torch import save_file

    with_bos = kind == "llama"
    name = f"tiny-{kind}"
    tok = train_tokenizer(kind)
    hf_tok = make_hf_tokenizer(tok, with_bos)
    bos_id = tok.token_to_id("<|begin_of_text|>") if with_bos else None
    eos_id = tok.token_to_id("<|endoftext|>" if with_bos else "<|im_end|>")
    pad_id = tok.token_to_id("<|endoftext|>")

    if kind == "llama":
        cfg = transformers.LlamaConfig(
            **COMMON,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.Qwen2Config(
            **COMMON,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
            bos_token_id=pad_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        cls = transformers.Qwen2ForCausalLM

    torch.manual_seed(SEED)
    model = cls(cfg).to(torch.float32).eval()
    model.config._attn_implementation = "eager"
    randomize(model, SEED + (0 if kind == "llama" else 1))
    if kind == "qwen2":
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert model.model.layers[0].self_attn.q_proj.bias is not None

    seqs = sequences(tok, with_bos, hf_tok, SEED)

    results = {}
    for dtype_name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        d = os.path.join(out_dir, name if dtype_name == "f32" else f"{name}-{dtype_name}")
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        m = model if dtype_name == "f32" else copy.deepcopy(model).to(dtype)
        m.save_pretrained(d, safe_serialization=True)
        del m
        hf_tok.save_pretrained(d)
        fix_config(os.path.join(d, "config.json"), 10000.0)
        # tiny-qwen2* keep chat_template.jinja too (same text), as newer HF repos have
        fix_tokenizer_config(d, keep_jinja_file=(kind == "qwen2"))
        os.chmod(os.path.join(d, "model.safetensors"), 0o644)
        check_tokenizer_roundtrip(d, hf_tok, with_bos)
        # reload from disk, upcast to f32, eager attention: this is the reference
        ref = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        entries = compute_logits(ref, seqs if dtype_name == "f32" else seqs[:4] + seqs[6:7])
        write_json(os.path.join(d, "logits.json"), entries)
        if dtype_name == "f32":
            write_json(os.path.join(d, "greedy.json"), greedy(ref, hf_tok, [seqs[6], seqs[-1], seqs[0]]))
            cases = []
            for t in list(TEXTS.values()) + ["", " ", "hello", "  two  spaces", "<|im_start|>user\nhi<|im_end|>\n"]:
                enc = tok.encode(t)
                cases.append({"text": t, "ids": enc.ids, "tokens": enc.tokens, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
            write_json(os.path.join(d, "tokenizer_cases.json"), cases, compact=False)
        results[dtype_name] = d
    return results


def main():
    out_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "tests", "fixtures", "hf"))
    os.makedirs(out_dir, exist_ok=True)
    import safetensors
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    versions = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    t0 = time.time()
    made = {}
    for kind in ("llama", "qwen2"):
        made[kind] = build(kind, out_dir, versions)
    write_json(
        os.path.join(out_dir, "VERSIONS.json"),
        {"generator": "scripts/ref/gen_hf_fixtures.py", "seed": SEED, "init_std": INIT_STD, "versions": versions},
        compact=False,
    )
    print(f"done in {time.time() - t0:.1f}s: {json.dumps(made, indent=1)}", file=sys.stderr)


if __name__ == "__main__":
    main()
