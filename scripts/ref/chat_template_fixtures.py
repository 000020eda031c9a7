#!/usr/bin/env python3
"""Chat-template fixtures: GGUF templates rendered by transformers.

Usage:
    python scripts/ref/chat_template_fixtures.py [OUT.json] [MODEL.gguf ...]

Defaults: OUT = tests/fixtures/chat_templates.json, models =
~/.cache/ferrollm/models/{SmolLM2-135M-Instruct.Q4_1,qwen2.5-coder-0.5b-instruct.Q4_K_M}.gguf

For each GGUF it reads tokenizer.chat_template and the BOS/EOS token strings
(tokenizer.ggml.tokens[bos_token_id / eos_token_id]) with the `gguf` package,
builds a transformers PreTrainedTokenizerFast that carries that template and
those special tokens (its vocabulary is a dummy: only the rendering is used),
and records apply_chat_template(messages, tokenize=False,
add_generation_prompt=...) for each conversation in CONVERSATIONS, both with
and without add_generation_prompt. Conversations with "tools" pass them as
apply_chat_template(..., tools=...).
"""

import json
import os
import sys

CONVERSATIONS = [
    {
        "name": "single_user",
        "messages": [{"role": "user", "content": "Hello! Who are you?"}],
    },
    {
        "name": "system_user",
        "messages": [
            {"role": "system", "content": "You are a terse assistant. Answer in one word."},
            {"role": "user", "content": "What colour is the sky?"},
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "2 + 2 = 4."},
            {"role": "user", "content": "And times 3?"},
        ],
    },
    {
        "name": "system_multi_turn_ends_with_assistant",
        "messages": [
            {"role": "system", "content": "You are a helpful coding assistant."},
            {"role": "user", "content": "Write a Python function that returns the square of x."},
            {"role": "assistant", "content": "```python\ndef square(x):\n    return x * x\n```"},
            {"role": "user", "content": "Now in Rust."},
            {"role": "assistant", "content": "fn square(x: i64) -> i64 {\n    x * x\n}"},
        ],
    },
    {
        "name": "unicode_and_whitespace",
        "messages": [
            {"role": "user", "content": "  Größe? 東京 🍕\n\nline two\twith tab  "},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "<b>not special</b> {{ not jinja }} {% raw %}"},
        ],
    },
    {
        "name": "system_only",
        "messages": [{"role": "system", "content": "System prompt only."}],
    },
    {
        "name": "tools_single_user",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the current weather for a city, in °C or °F.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "City name, e.g. \"Paris\" or 'São Paulo' & <others>"},
                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                        },
                        "required": ["city"],
                    },
                },
            }
        ],
    },
]

DEFAULT_MODELS = [
    ("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf"),
]


def read_gguf(path):
    import gguf

    r = gguf.GGUFReader(path)

    def val(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        return f.contents()

    tokens_field = r.fields["tokenizer.ggml.tokens"]
    bos_id = val("tokenizer.ggml.bos_token_id")
    eos_id = val("tokenizer.ggml.eos_token_id")

    def tok_str(i):
        if i is None:
            return None
        return tokens_field.contents(i)

    return {
        "chat_template": val("tokenizer.chat_template"),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "bos_token": tok_str(bos_id),
        "eos_token": tok_str(eos_id),
        "add_bos_token": bool(val("tokenizer.ggml.add_bos_token", False)),
        "architecture": val("general.architecture"),
    }


def make_tokenizer(template, bos, eos):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0}
    for t in (bos, eos):
        if t is not None and t not in vocab:
            vocab[t] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = dict(tokenizer_object=tk, unk_token="<unk>", chat_template=template)
    if bos is not None:
        kw["bos_token"] = bos
    if eos is not None:
        kw["eos_token"] = eos
    return PreTrainedTokenizerFast(**kw)


def main():
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "tests", "fixtures", "chat_templates.json")
    cache = os.path.expanduser("~/.cache/ferrollm/models")
    if len(sys.argv) > 2:
        models = [(os.path.basename(p).rsplit(".gguf", 1)[0], p) for p in sys.argv[2:]]
    else:
        models = [(n, os.path.join(cache, f)) for n, f in DEFAULT_MODELS]

    import jinja2
    import transformers

    result = {
        "format": "ferrollm-chat-template-fixture-v1",
        "generator": "scripts/ref/chat_template_fixtures.py",
        "transformers_version": transformers.__version__,
        "jinja2_version": jinja2.__version__,
        "notes": (
            "rendered with PreTrainedTokenizerFast(chat_template=..., bos_token=..., eos_token=...)"
            ".apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=...)"
        ),
        "models": [],
    }
    for name, path in models:
        meta = read_gguf(path)
        tok = make_tokenizer(meta["chat_template"], meta["bos_token"], meta["eos_token"])
        cases = []
        for conv in CONVERSATIONS:
            for agp in (True, False):
                kwargs = dict(tokenize=False, add_generation_prompt=agp)
                if conv.get("tools"):
                    kwargs["tools"] = conv["tools"]
                rendered = tok.apply_chat_template(conv["messages"], **kwargs)
                case = {
                    "name": conv["name"],
                    "add_generation_prompt": agp,
                    "messages": conv["messages"],
                    "expected": rendered,
                }
                if conv.get("tools"):
                    case["tools"] = conv["tools"]
                cases.append(case)
        result["models"].append(
            {
                "name": name,
                "gguf_file": os.path.basename(path),
                "architecture": meta["architecture"],
                "chat_template": meta["chat_template"],
                "bos_token": meta["bos_token"],
                "eos_token": meta["eos_token"],
                "bos_token_id": meta["bos_token_id"],
                "eos_token_id": meta["eos_token_id"],
                "add_bos_token": meta["add_bos_token"],
                "cases": cases,
            }
        )
        print(f"{name}: {len(cases)} cases", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out} ({os.path.getsize(out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
