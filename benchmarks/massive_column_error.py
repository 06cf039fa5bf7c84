"""One matrix's importance-weighted squared encoding error at each k-quant type, the conversion's own encoding
against llama.cpp's quantizer given the same importance: on a matrix whose input carries a massive activation
(one column's mean squared input ~1e5x the others') the symmetric types (Q3_K, Q6_K) round that column's weight to
zero and their weighted error jumps above the next smaller type's. Sampled rows as the allocation's costs sample
them; the weights are the solver's column importance (the self-calibration's mean squared inputs).

    python benchmarks/massive_column_error.py /work/models/ref/SmolLM2-135M-Instruct.dithered-s1234.F16.gguf \
        blk.11.ffn_down.weight
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity_common import allocation_inputs  # noqa: E402

from hqq2gguf import ggml_ref  # noqa: E402
from hqq2gguf.allocate.costs import encoding_error, sampled_rows  # noqa: E402

Q = gguf.GGMLQuantizationType


def main(ref: Path, name: str) -> None:
    options, source, _, importance = allocation_inputs(ref, "Q4_K_M")
    for n, data in source.tensors_named({name}):
        rows = data[torch.from_numpy(sampled_rows(data.shape[0]))].to(torch.float32)
        w = importance.for_tensor(n, tuple(data.shape))[0]
        x = rows.numpy()
        top = np.argsort(-w)[:3]
        print(f"{n}: {rows.shape[0]} sampled rows; largest column importances {np.round(w[top], 1).tolist()} "
              f"(median {np.median(w):.3g})")
        for t in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
            ours = float((encoding_error(rows, t, options.solver, w, options.device) ** 2 * w).sum())
            decoded = ggml_ref.ggml_dequantize(t, ggml_ref.ggml_quantize(t, x, w.astype(np.float32))).reshape(x.shape)
            theirs = float(((decoded - x) ** 2 * w).sum())
            print(f"  {t.name}: hqq2gguf {ours:.4g}   llama.cpp (same importance) {theirs:.4g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
