#!/usr/bin/env python3
"""Re-encode a Llama GGUF (by default SmolLM2-135M-Instruct Q4_1) as f16, q8_0 and q4_0 GGUFs.

Issue 6 asks for batch-1 speed on a ~125M Llama in f16, q8_0 and q4_0; no such files are
published for SmolLM2, so this makes them: every 2-D weight is dequantized to f32 with the
`gguf` package's numpy reference code and requantized to the target type (1-D tensors, the
norms, stay f32). Metadata and tokenizer are copied unchanged except `general.file_type`.
The q8_0/q4_0 files are therefore "Q4_1 weights requantized", not quantized from the original
bf16 checkpoint: fine for speed comparisons, and both engines read the same file.

    /opt/ref-venv/bin/python scripts/bench/make_llama_variants.py [SRC.gguf] [--out DIR] [--types f16,q8_0,q4_0]
    # then, optionally, check that llama.cpp loads each and greedy-decodes a short prompt:
    /opt/ref-venv/bin/python scripts/bench/make_llama_variants.py --check

Outputs go next to the source as NAME.F16.gguf, NAME.Q8_0.gguf, NAME.Q4_0.gguf (NAME is the
source's file name up to its last quantization suffix).
"""

import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F

DEFAULT_SRC = os.path.expanduser("~/.cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
TYPES = {
    "f16": (Q.F16, F.MOSTLY_F16, "F16"),
    "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0, "Q8_0"),
    "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0, "Q4_0"),
}


def out_path(src: str, out_dir: str | None, suffix: str) -> str:
    base = os.path.basename(src)
    stem = base[: -len(".gguf")] if base.endswith(".gguf") else base
    if "." in stem:
        stem = stem.rsplit(".", 1)[0]  # drop ".Q4_1"
    return os.path.join(out_dir or os.path.dirname(os.path.abspath(src)), f"{stem}.{suffix}.gguf")


def convert(src: str, dst: str, qtype: Q, ftype: F) -> None:
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst + ".tmp", arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(int(ftype))
    for t in reader.tensors:
        # `t.shape` is GGUF's ne order (ne0 first); numpy wants it reversed.
        shape = tuple(int(d) for d in reversed(t.shape))
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if len(shape) >= 2 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            target = qtype
        else:
            target = Q.F32
        if target == Q.F32:
            writer.add_tensor(t.name, data)
        elif target == Q.F16:
            writer.add_tensor(t.name, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(data, target)
            writer.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=target)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(dst + ".tmp", dst)


def check(paths: list[str], prompt: str, n: int) -> bool:
    """Greedy tokens from llama.cpp for each file; prints them for comparison with ferrollm."""
    from llama_cpp import Llama

    ok = True
    for p in paths:
        llm = Llama(model_path=p, n_ctx=256, n_threads=2, verbose=False, logits_all=False)
        toks = llm.tokenize(prompt.encode(), add_bos=True)
        out = []
        for tok in llm.generate(toks, top_k=1, temp=0.0, repeat_penalty=1.0):
            out.append(tok)
            if len(out) == n:
                break
        text = llm.detokenize(out).decode(errors="replace")
        print(f"{os.path.basename(p)}: llama.cpp greedy {out} {text!r}")
        ok &= len(out) == n
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC)
    ap.add_argument("--out", help="output directory (default: next to the source)")
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--check", action="store_true", help="print llama.cpp's greedy tokens for each output")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--force", action="store_true", help="rewrite outputs that exist")
    args = ap.parse_args()
    paths = []
    for name in args.types.split(","):
        qtype, ftype, suffix = TYPES[name]
        dst = out_path(args.src, args.out, suffix)
        if args.force or not os.path.exists(dst):
            print(f"writing {dst}", file=sys.stderr)
            convert(args.src, dst, qtype, ftype)
        print(dst)
        paths.append(dst)
    if args.check and not check(paths, args.prompt, args.tokens):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
