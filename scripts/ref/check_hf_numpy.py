#!/usr/bin/env python3
"""Independent NumPy forward pass for the tiny HF fixtures (f32 dirs).

Usage:
    python scripts/ref/check_hf_numpy.py [tests/fixtures/hf/tiny-llama ...]

Recomputes logits.json from config.json + model.safetensors with plain NumPy
(float64) and prints the largest absolute difference from transformers'
numbers. It documents the exact math the Rust engine must match for HF
(safetensors) Llama/Qwen2 checkpoints:
  * RMSNorm: x / sqrt(mean(x^2) + eps) * w
  * RoPE in the HF "rotate_half" form: the head dimension is split in two
    halves (x1 = x[:d/2], x2 = x[d/2:]), inv_freq[i] = theta^(-2i/d),
    out = [x1*cos - x2*sin, x2*cos + x1*sin]  (NOT interleaved pairs)
  * GQA: query head h uses KV head h // (n_heads / n_kv_heads)
  * causal softmax attention scaled by 1/sqrt(head_dim)
  * SwiGLU MLP: down(silu(gate(x)) * up(x))
  * q/k/v biases when present (Qwen2); lm_head = embed_tokens when tied.
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def forward(cfg, w, ids):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    T = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        b = w.get(name + ".bias")
        return y + b if b is not None else y

    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)
    sin = np.concatenate([np.sin(ang)] * 2, -1)

    def rope(x):  # x: [T, heads, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        rot = np.concatenate([-x2, x1], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").reshape(T, nh, hd))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(T, nkv, hd))
        v = lin(h, p + "self_attn.v_proj").reshape(T, nkv, hd)
        rep = nh // nkv
        out = np.zeros((T, nh, hd))
        for hh in range(nh):
            kv = hh // rep
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, hh, :] = s @ v[:, kv, :]
        x = x + lin(out.reshape(T, nh * hd), p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = sys.argv[1:] or [
        os.path.join(here, "..", "..", "tests", "fixtures", "hf", n) for n in ("tiny-llama", "tiny-qwen2")
    ]
    worst = 0.0
    for d in dirs:
        cfg = json.load(open(os.path.join(d, "config.json")))
        w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
        if cfg.get("tie_word_embeddings"):
            assert "lm_head.weight" not in w
        for e in json.load(open(os.path.join(d, "logits.json"))):
            ref = np.array(e["logits"])
            got = forward(cfg, w, e["input_ids"])
            diff = float(np.abs(got - ref).max())
            worst = max(worst, diff)
            print(f"{os.path.basename(os.path.normpath(d))} {e['name']:>14} len {len(e['input_ids']):3d} max|diff| {diff:.2e}")
    print(f"worst {worst:.2e}")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
