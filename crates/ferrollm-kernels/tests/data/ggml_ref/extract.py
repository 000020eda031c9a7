"""Regenerates these fixtures: for each tensor type in the two reference models, the raw bytes of
the first blocks (up to 1024 weights) of two rows of one matrix, and gguf-py's dequantization of
them (the Python port of ggml's reference dequantizers).

    /opt/ref-venv/bin/python extract.py OUT_DIR MODEL.gguf...
"""
import sys
import numpy as np
import gguf
from gguf.quants import dequantize

out, models = sys.argv[1], sys.argv[2:]
seen = set()
for path in models:
    for t in gguf.GGUFReader(path).tensors:
        name = t.tensor_type.name
        if name in seen or len(t.shape) != 2 or name in ("F32", "F16", "BF16"):
            continue
        seen.add(name)
        cols, rows = int(t.shape[0]), 2
        bsz, tsz = gguf.GGML_QUANT_SIZES[t.tensor_type]
        row_bytes = cols // bsz * tsz
        take = min(cols, 1024) // bsz * tsz  # whole blocks from the start of each row
        flat = np.asarray(t.data).reshape(-1).view(np.uint8)
        raw = np.stack([flat[r * row_bytes : r * row_bytes + take] for r in range(rows)])
        vals = dequantize(raw, t.tensor_type).astype("<f4")
        raw.tofile(f"{out}/{name}.bin")
        vals.tofile(f"{out}/{name}.f32")
        print(name, t.name, rows, take // tsz * bsz)
