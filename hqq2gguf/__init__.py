"""hqq2gguf: Hugging Face / GGUF models to standard GGUF files, with HQQ-optimized blocks.

The data flow is visible in the layout; imports point one way, down this list:

    errors, qtypes, options   the error hierarchy, the one table of block types, validated option dataclasses
    read/, models/, vocab/    HF directory (config, safetensors, tokenizer) or GGUF in; per-architecture
                              hyper-parameters and tensor transforms; tokenizer metadata
    sources/                  read: one immutable Source per input kind (names, shapes, hyper-parameters, metadata)
    calibrate/                calibrate: per-column importance (imatrix files, data-free proxies)
    plan                      plan: every output tensor's type (plain conversion rules, then recipes/)
    encode                    encode: gguf-py's reference, the torch solver (optimize/, pack/) or CUDA (cuda/)
    write/                    write: the GGUF sequence (header, KV, tensor infos, data), provenance, atomic rename
    convert                   the pipeline, top to bottom
    cli/                      the command line (thin: options map onto options.ConvertOptions.from_args)

The kernel sources live in the repository's cuda/ (shipped as hqq2gguf/cuda/kernels/); hqq2gguf/cuda/ loads,
launches and emulates them.
"""

__version__ = "0.1.0"

# Our own metadata keys (docs/metadata.md) start with this.
PROVENANCE_PREFIX = "hqq2gguf."
