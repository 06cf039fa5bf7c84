"""Inputs: Hugging Face directories and GGUF files, validated before any tensor data is read."""
