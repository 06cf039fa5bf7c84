"""Per-architecture knowledge: importing this package registers every supported family."""

from hqq2gguf.models.base import Architecture, architecture_for, supported_architectures
from hqq2gguf.models import gemma, llama, phi3, qwen  # noqa: F401 - registers the families

__all__ = ["Architecture", "architecture_for", "supported_architectures"]
