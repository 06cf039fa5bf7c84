"""The output side: the GGUF write sequence, hqq2gguf's provenance keys, the file name, atomic replacement."""

from hqq2gguf.write.atomic import atomic_output, atomic_outputs, check_output_path
from hqq2gguf.write.gguf_file import GgufFile
from hqq2gguf.write.naming import explicit_output, output_path, safe_file_stem
from hqq2gguf.write.provenance import write_provenance

__all__ = ["GgufFile", "atomic_output", "atomic_outputs", "check_output_path", "explicit_output", "output_path",
           "safe_file_stem", "write_provenance"]
