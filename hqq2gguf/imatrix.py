"""``hqq2gguf imatrix``: llama.cpp's importance matrix of a model, from its own text or the user's, as a GGUF
imatrix file that ``llama-quantize --imatrix`` reads (and ``hqq2gguf convert --imatrix``).

    make_imatrix(Path("SmolLM2-135M"), Path("smollm2.imatrix.gguf"))                  # self-calibration
    make_imatrix(Path("model-f16.gguf"), Path("m.imatrix.gguf"), text=Path("calib.txt"))

The same statistics as ``llama-imatrix -f TEXT -c CHUNK`` (hqq2gguf.calibrate.collect), written under a
temporary name and renamed into place when complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hqq2gguf.calibrate import SelfText, collect_activations, write_imatrix
from hqq2gguf.convert import runnable_model
from hqq2gguf.errors import OutputError
from hqq2gguf.options import ConvertOptions
from hqq2gguf.sources import open_source
from hqq2gguf.write import atomic_output, check_output_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImatrixResult:
    path: Path
    n_entries: int
    n_chunks: int
    n_tokens: int
    text_sha256: str


def make_imatrix(model: Path, output: Path, *, text: Path | None = None, seed: int = 0, chunk: int = 512,
                 force: bool = False, save_text: Path | None = None, allow_pickle: bool = False,
                 process_output: bool = False) -> ImatrixResult:
    """Write the GGUF imatrix of ``model`` (an HF directory or a GGUF llama.cpp can run) over ``text`` (a UTF-8
    file), or over text the model writes itself (seeded by ``seed``) when ``text`` is None."""
    if output.suffix != ".gguf":
        raise OutputError("the imatrix is written in llama.cpp's GGUF format: name the file *.gguf", file=output)
    check_output_path(output, force=force)
    options = ConvertOptions(allow_pickle=allow_pickle)
    source = open_source(Path(model), options)
    what: SelfText | Path = SelfText(seed=seed) if text is None else text
    with runnable_model(source, options, needed=True) as runnable:
        stats, read = collect_activations(runnable, what, chunk=chunk, process_output=process_output)
    if save_text is not None:
        save_text.write_text(read.text, encoding="utf-8")
    dataset = f"hqq2gguf self-calibration (seed {seed})" if text is None else text.name
    with atomic_output(output, force=force) as tmp:
        write_imatrix(tmp, stats.sums, stats.counts, datasets=[dataset], chunk_count=stats.chunks,
                      chunk_size=stats.chunk_size)
    logger.info("wrote %s: %d matrices, %d tokens (%d pieces of at most %d)", output, len(stats.sums), read.tokens,
                stats.chunks, stats.chunk_size)
    return ImatrixResult(output, len(stats.sums), stats.chunks, read.tokens, read.sha256)
