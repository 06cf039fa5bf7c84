"""Calibrate: per-column importance of every weight matrix, for the solver's objective.

    importance = column_importance(source, options, runnable)   # GGUF name -> float32 (n_expert, ne0)
    importance.for_tensor("blk.0.attn_q.weight", shape)

From llama.cpp's imatrix file (``--imatrix``, :mod:`~hqq2gguf.calibrate.imatrix`); from text read by the model
through llama.cpp, its own (``--calibration self``) or the user's (``--calibration FILE``), with llama-imatrix's
statistics (:mod:`~hqq2gguf.calibrate.activations`); from the weights alone (``--importance norms|derived``,
:mod:`~hqq2gguf.calibrate.proxy`); or none (uniform). Decided before anything is written: an imatrix made for
another model is refused here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from hqq2gguf.calibrate.activations import SelfText, collect_activations
from hqq2gguf.calibrate.covariance import Covariances, CovarianceSink
from hqq2gguf.calibrate.imatrix import Importance, read_imatrix, write_imatrix
from hqq2gguf.calibrate.sensitivity import Sensitivity, measure_sensitivity
from hqq2gguf.calibrate.proxy import derived_importance, derived_inputs, needed_norms, norm_importance
from hqq2gguf.errors import InputError
from hqq2gguf.feedback import DAMP
from hqq2gguf.options import ConvertOptions, ImportanceSource
from hqq2gguf.sources import Source

logger = logging.getLogger(__name__)

#: Less calibration text than this (tokens, e.g. a short file of the user's) and the feedback is left off. The
#: self-calibration's 16 x 64 gives 900-1,024 (sequences may end early), the least it was measured with; this
#: floor, half of it, was not itself measured.
FEEDBACK_MIN_TOKENS = 512

__all__ = ["Importance", "ImportanceSource", "SelfText", "Sensitivity", "measure_sensitivity", "calibration_source", "collect_activations",
           "column_importance", "derived_importance", "norm_importance", "read_imatrix", "write_imatrix"]


def column_importance(source: Source, options: ConvertOptions, runnable: Path | None = None) -> Importance:
    """Column importance for the solver: the imatrix file, calibration text, the weights' proxy, or none.

    ``runnable``: a GGUF of the source that llama.cpp can run (needed when ``options.calibrated``). Every
    imatrix entry naming an output tensor must fit it, and an imatrix naming none of them was made for
    another model."""
    if options.recipe is None:
        return Importance()
    outputs = source.outputs
    if options.calibrated:
        if runnable is None:
            raise ValueError("calibration needs a runnable GGUF of the model (internal error)")
        return _from_text(runnable, options)
    if options.imatrix is not None:
        imp = read_imatrix(options.imatrix)
        shapes = {out.name: out.shape for out in outputs}
        matched = [name for name in imp.entries if name in shapes]
        if not matched:
            raise InputError(f"none of the imatrix's {len(imp)} entries names a tensor of {source.path}: it was "
                             "made for another model", file=options.imatrix)
        for name in matched:
            imp.for_tensor(name, shapes[name])
        logger.info("imatrix: %d of its %d entries used", len(matched), len(imp))
        return imp
    if options.importance is ImportanceSource.NONE:
        return Importance()
    names = [out.name for out in outputs]
    norms = {n: t.to(torch.float32).numpy() for n, t in source.tensors_named(needed_norms(names))}
    if options.importance is ImportanceSource.NORMS:
        return norm_importance(names, norms)
    n_head = source.hparams.get(f"{source.arch}.attention.head_count", 0)
    n_head_kv = source.hparams.get(f"{source.arch}.attention.head_count_kv", n_head)
    if not (isinstance(n_head, int) and isinstance(n_head_kv, int)):  # per-layer head counts: not modelled
        n_head = n_head_kv = 0
    inputs = ((n, t.to(torch.float32).numpy()) for n, t in source.tensors_named(derived_inputs(names)))
    return derived_importance(names, norms, inputs, n_head, n_head_kv)


def calibration_source(options: ConvertOptions) -> SelfText | Path:
    """What the model reads: its own text (seeded by ``--seed``) or the user's file."""
    if isinstance(options.calibration, Path):
        return options.calibration
    return SelfText(seed=options.seed if options.seed is not None else 0)


def _from_text(runnable: Path, options: ConvertOptions) -> Importance:
    source = calibration_source(options)
    sink = CovarianceSink() if options.feedback else None
    try:
        stats, text = collect_activations(runnable, source, covariance=sink)
    except BaseException:
        if sink is not None:
            sink.close()
        raise
    covariances = Covariances()
    if sink is not None and text.tokens < FEEDBACK_MIN_TOKENS:
        logger.info("error feedback: off, %d tokens of calibration text (it needs %d)", text.tokens,
                    FEEDBACK_MIN_TOKENS)
        sink.close()
    elif sink is not None:
        covariances = sink.finish()
        logger.info("error feedback: %d input covariances from %d tokens", len(covariances), text.tokens)
    if options.save_calibration is not None:
        options.save_calibration.write_text(text.text, encoding="utf-8")
        logger.info("calibration text saved to %s", options.save_calibration)
    kind = "self" if isinstance(source, SelfText) else "file"
    record: dict[str, object] = {"kind": kind, "chunks": text.n_chunks, "chunk_size": text.chunk,
                                 "tokens": text.tokens, "text_sha256": text.sha256}
    if isinstance(source, SelfText):
        record |= source.provenance()
    if len(covariances):
        record["feedback"] = {"damp": DAMP, "tokens": text.tokens}
    return Importance(stats.means(), f"{kind} calibration", record, text.sequences, covariances)
