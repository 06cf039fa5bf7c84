"""hqq2gguf: Hugging Face / GGUF models to standard GGUF files, with HQQ-optimized blocks.

The data flow is visible in the layout and imports only point forward:

    read/    HF directory (config, safetensors, tokenizer) or GGUF in, validated, one tensor at a time
    models/  per-architecture hyper-parameters and tensor transforms (HF layout -> GGUF layout)
    vocab/   tokenizer metadata (BPE / SentencePiece, pre-tokenizer, special tokens, chat template)
    plan.py  the output type of every tensor
    write/   streaming GGUF writer (temporary name, rename when complete)
    convert.py  the pipeline; cli.py the thin command-line front end
"""

__version__ = "0.1.0"

# Our own metadata keys (docs/metadata.md) start with this.
PROVENANCE_PREFIX = "hqq2gguf."
