"""Sensitivity: how far the model's next-token distributions move per unit of error at each weight matrix's
output, measured by noise injection on text the model writes itself (the "linearity theorem" of HIGGS,
NAACL 2025: the KL-divergence of a model whose layers carry small independent errors is close to the sum of
each layer's coefficient times its error).

    sens = measure_sensitivity(runnable_gguf, names, seed=0)
    sens.gain_of("blk.3.ffn_down.weight")        # KLD per unit of squared error per token at its output
    sens.activations                             # Importance: mean squared input of every column

The model writes a few short sequences (or the self-calibration's, already written, are read: ``written``);
one clean pass over them (all side by side in one batch) keeps the
next-token log-probabilities and every matrix's mean squared inputs. A probe then adds independent Gaussian
noise to the outputs ``y = W x`` of some matrices (through llama.cpp's eval callback, in place, after the
multiplication and before anything reads it), of variance ``rho * mean(y**2)``, and measures the mean KLD from
the clean pass. Matrices are probed in groups (every matrix of a layer; every layer's matrix of one kind), each
matrix's gain modelled as ``layer factor x kind factor``, the factors fitted to the groups' KLDs: about L + 2K
probes instead of L x K (the first block's matrices are probed alone, :func:`probe_groups`; ``per_tensor``
probes every matrix alone). An error of squared norm ``e`` per token at matrix
t's output is then predicted to cost ``gain[t] * e``.

Measured on SmolLM2-135M, Q4_K_M's bytes re-allocated, mean KLD on 40 wiki chunks: recipe types 0.0496, per
matrix 0.0344 (211 probes, 157 s), layer x kind 0.0373 (39 probes, 32 s), layer x kind with the first block's
matrices alone 0.0358 (45 probes; 4 x 64 tokens each, busy machine timings); the model of the per-matrix gains
as layer x kind factors leaves a spread of 1.8x (log std 0.61) where kinds alone leave 2.5x. The seed moves the
result more than these choices: 0.0353 with seed 0, 0.0382 with seed 1 (:data:`PROBE_TEXT`), and it is the probes'
seed that does (the calibration's fixed at 0, probe seeds 0 / 1 / 2: 0.0353 / 0.0379 / 0.0364). Tried and not
kept: noise shaped like a block quantization error (each output's variance at each token from the 32-weight
blocks' mean square weights times that token's inputs) instead of isotropic: 0.0407 / 0.0434 (seeds 0 / 1)
against 0.0353 / 0.0382 (commit bbcc1ad; benchmarks/results/allocation_settings_smollm2.jsonl). Known limits
(benchmarks/results/sensitivity_diagnostics.md): a probe of a layer or kind holding a massive-activation output
saturates (Qwen2.5-Coder-1.5B's blk.1 / blk.2: KLD 0.21 / 0.52, their gains 25-50x what real errors give), and at
equal energy real quantization error costs 0.3x-2.2x what this noise does, by kind (attn_k, attn_v ~0.4x). Tried
for them and not kept: each matrix probed with noise of its own encoding error's energy at the recipe's type (the
operating point; commit 803dfa3: SmolLM2 0.97-1.00x, Qwen Q4_K_M 1.04x, Q5_K_M 1.16x of this), and real error
(y += c dW x, the whole matrices' Q4_K blocks) instead of noise (SmolLM2 Q4_K_M 0.95x / 0.96x, Q5_K_M 1.03x / 1.03x;
Qwen Q4_K_M 1.01x, Q5_K_M 1.11 +- 0.06x; and the encoding costs Qwen2.5-Coder-1.5B 132 s).
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hqq2gguf.calibrate.activations import SelfText, write_sequences
from hqq2gguf.calibrate.collect import GGML_TYPE_F32, GgmlTensor, ImatrixCollector, _ggml, weight_name
from hqq2gguf.calibrate.imatrix import Importance
from hqq2gguf.calibrate.llama_run import LlamaRunner
from hqq2gguf.errors import InputError
from hqq2gguf.progress import Progress

logger = logging.getLogger(__name__)

#: Relative noise variance of a probe, shared by the matrices of a group: small enough that KLD grows in
#: proportion (measured: 3x the noise gave 3x the KLD), large enough to stand above the sampling noise.
RHO = 1e-2
#: The text probed: sequences the model writes (side by side, one batch), as self-calibration's (whose first 4
#: sequences' beginnings are read instead when it wrote them: writing 4 x 32 tokens takes Qwen2.5-Coder-1.5B
#: ~8 s on 2 cores). 4 x 32 tokens:
#: half of 4 x 64's time, and no worse (SmolLM2-135M, Q4_K_M's bytes, mean KLD on 40 wiki chunks, seed 0 / 1:
#: 0.0358 / 0.0404 with 4 x 64 tokens and 256 rows per cost, 0.0353 / 0.0382 with 4 x 32 and 128 rows).
PROBE_TEXT = SelfText(n_sequences=4, n_tokens=32, batch=4)


@dataclass(frozen=True)
class Sensitivity:
    """Each matrix's gain (KLD per unit of squared output error per token) and the columns' mean squared
    inputs. Empty: every gain 1 and no activations (the cost is the plain squared error)."""

    gain: Mapping[str, float] = field(default_factory=dict)
    activations: Importance = field(default_factory=Importance)
    record: Mapping[str, object] = field(default_factory=dict)

    def gain_of(self, name: str) -> float:
        """The measured gain; for a matrix not probed (an expert tensor), the median of its kind's, else of all."""
        if name in self.gain:
            return self.gain[name]
        if not self.gain:
            return 1.0
        same = [g for n, g in self.gain.items() if kind(n) == kind(name)]
        return statistics.median(same or list(self.gain.values()))


def kind(name: str) -> str:
    """``blk.3.ffn_down.weight`` -> ``ffn_down.weight``."""
    return re.sub(r"^blk\.\d+\.", "", name)


def layer(name: str) -> str:
    """``blk.3.ffn_down.weight`` -> ``blk.3``; a tensor outside the blocks is its own layer."""
    m = re.match(r"^(blk\.\d+)\.", name)
    return m[1] if m else name


def measure_sensitivity(model: Path, names: Sequence[str], *, seed: int = 0, threads: int | None = None,
                        per_tensor: bool = False, written: Sequence[Sequence[int]] = ()) -> Sensitivity:
    """The gains of the matrices ``names`` of ``model`` (a GGUF llama.cpp runs), deterministic for a ``seed``.

    ``written``: token sequences the model already wrote (self-calibration's): when there are enough, the probes
    read the first :data:`PROBE_TEXT` ``n_tokens`` of each of the first ``n_sequences`` instead of writing."""
    start = time.perf_counter()
    text = SelfText(**{**PROBE_TEXT.__dict__, "seed": seed})
    reused = probe_sequences(written, text)
    with _Probe(model, text, set(names), threads, reused) as probe:
        found = [n for n in names if n in probe.outputs]
        groups = {n: [n] for n in found} if per_tensor else probe_groups(found)
        results = []
        with Progress(len(groups), "sensitivity: probing") as progress:
            for i, members in enumerate(groups.values()):
                results.append(probe.kld({n: RHO / len(members) for n in members}, seed=seed * 100_003 + i))
                progress.update(1)
        n_tokens = probe.n_tokens
        activations = probe.activations()
    gain = _fit(results)
    seconds = time.perf_counter() - start
    logger.info("sensitivity: %d matrices, %d probes (%s) over %d tokens, %.1f s", len(gain), len(groups),
                "one matrix each" if per_tensor else "layers and kinds", n_tokens, seconds)
    record = {"method": "noise injection, " + ("per matrix" if per_tensor else "layer x kind"), "probes": len(groups),
              "tokens": n_tokens, "text": "the calibration's" if reused else "written", "rho": RHO, "seed": seed}
    return Sensitivity({n: float(f"{g:.4g}") for n, g in gain.items()}, activations, record)


def probe_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """The probes of the layer x kind model: each matrix of the first block, and each outside the blocks
    (output, token embedding), alone; the others by block and by kind. The first block stands apart because
    its matrices break the model: on SmolLM2-135M its attn_v and attn_output are ~100x more sensitive than
    its block factor x their kind factor says, and probed alone the fit's log error (against per-matrix
    probes) falls from 0.64 to 0.37, the largest from 4.3 to 1.0."""
    out: dict[str, list[str]] = {}
    for n in names:
        if layer(n) in ("blk.0", n):
            out[n] = [n]
        else:
            out.setdefault(layer(n), []).append(n)
            out.setdefault("kind " + kind(n), []).append(n)
    return out


def probe_sequences(written: Sequence[Sequence[int]], text: SelfText) -> list[list[int]] | None:
    """The beginnings (start token and ``text.n_tokens`` more) of the first ``text.n_sequences`` sequences of
    ``written``, or None when it holds fewer, or shorter ones, than that."""
    picked = [list(w[:text.n_tokens + 1]) for w in written[:text.n_sequences]]
    if len(picked) < text.n_sequences or any(len(w) < text.n_tokens + 1 for w in picked):
        return None
    return picked


def _fit(results: Sequence[tuple[float, Mapping[str, float]]], rounds: int = 200) -> dict[str, float]:
    """A matrix probed alone: its measured gain. The others: ``gain[t] = exp(u[layer] + v[kind])`` fitted so
    that each group's predicted KLD (sum of gain x the noise each member received) is its measured one, by
    alternating exact updates of the group's own factor."""
    alone = {n: k / e[n] for k, e in results if len(e) == 1 for n in e}
    results = [(k, e) for k, e in results if len(e) > 1]
    u: dict[str, float] = {}
    v: dict[str, float] = {}
    names = {n for _, e in results for n in e}
    for n in names:
        u.setdefault(layer(n), 0.0)
        v.setdefault(kind(n), 0.0)
    for _ in range(rounds):
        for k, energy in results:
            members = list(energy)
            by_layer = len({layer(n) for n in members}) == 1
            pred = sum(math.exp(u[layer(n)] + v[kind(n)]) * energy[n] for n in members)
            step = math.log(max(k, 1e-12) / pred)
            if by_layer:
                u[layer(members[0])] += step
            else:
                v[kind(members[0])] += step
    return {n: math.exp(u[layer(n)] + v[kind(n)]) for n in sorted(names)} | alone


class _Probe:
    """The model with a context holding every probe sequence side by side, the sequences, and the clean pass."""

    def __init__(self, model: Path, text: SelfText, names: set[str], threads: int | None,
                 sequences: list[list[int]] | None = None) -> None:
        from llama_cpp import ggml_backend_sched_eval_callback

        self.model = Path(model)
        self.names = names
        self.rho: dict[str, float] = {}
        self.energy: dict[str, float] = {}
        self.tokens: dict[str, int] = {}
        self.outputs: set[str] = set()
        self.rng = np.random.default_rng(0)
        self.error: BaseException | None = None
        self.collector: ImatrixCollector | None = None
        self._ggml = _ggml()
        self.callback = ggml_backend_sched_eval_callback(self._on_eval)
        self.runner = LlamaRunner(self.model, n_ctx=text.n_tokens + 8, n_seq=text.batch, threads=threads,
                                  eval_callback=self.callback)
        try:
            self.sequences = sequences or write_sequences(self.runner, text, check=self._check,
                                                          what="sensitivity: writing")
            self.n_tokens = sum(map(len, self.sequences))
            self.collector = ImatrixCollector(min_rows=1)
            self.clean = self._log_probs()
            self.clean_p = self.clean.exp()
            self.collector, self._stats = None, self.collector.stats
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.runner.__exit__(None, None, None)

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def activations(self) -> Importance:
        return Importance(self._stats.means(), "sensitivity text")

    def kld(self, rho: Mapping[str, float], seed: int) -> tuple[float, dict[str, float]]:
        """Mean KLD(clean || noisy) over every token, and each matrix's mean squared noise per token."""
        self.rho, self.energy, self.tokens = dict(rho), {}, {}
        self.rng = np.random.default_rng(seed)
        try:
            noisy = self._log_probs()
        finally:
            self.rho = {}
        kld = float((self.clean_p * (self.clean - noisy)).sum(dim=1, dtype=torch.float64).mean())
        return kld, {n: self.energy[n] / self.tokens[n] for n in self.energy}

    def _log_probs(self) -> torch.Tensor:
        r = self.runner
        r._clear()
        entries = [(t, i, s, True) for s, seq in enumerate(self.sequences) for i, t in enumerate(seq)]
        r._decode(entries)
        self._check()
        z = np.ctypeslib.as_array(r._ll.llama_get_logits(r.ctx), shape=(len(entries), r.n_vocab))
        return torch.log_softmax(torch.from_numpy(z), dim=1)  # a new tensor: llama.cpp's buffer is reused

    def _check(self) -> None:
        error, self.error = self.error, None
        if isinstance(error, KeyboardInterrupt):
            raise error
        if error is not None:
            raise InputError(f"cannot measure sensitivity: {error}", file=self.model)

    def _on_eval(self, addr: int, ask: bool, user_data: int) -> bool:
        try:
            t = GgmlTensor.from_address(addr)
            if t.op != self._ggml.mul_mat and t.op != self._ggml.mul_mat_id:
                return not ask
            name = weight_name(GgmlTensor.from_address(t.src[0]).name)
            if name not in self.names:
                return not ask
            if self.collector is not None:  # the clean pass: statistics, and which matrices exist
                if ask:
                    return True
                if t.op == self._ggml.mul_mat:
                    self.outputs.add(name)
                self.collector._collect(t)
                return True
            if t.op != self._ggml.mul_mat or name not in self.rho:
                return not ask
            if ask:
                return True
            self._inject(t, name)
            return True
        except BaseException as e:  # never unwind through C; raised after decode
            self.error = self.error or e
            return False

    def _inject(self, t: GgmlTensor, name: str) -> None:
        if t.type != GGML_TYPE_F32 or t.nb[0] != 4 or t.nb[1] != 4 * t.ne[0]:
            raise ValueError(f"output of {name}: type {t.type}, strides {tuple(t.nb)}: expected contiguous F32")
        if t.buffer and not self._ggml.lib.ggml_backend_buffer_is_host(t.buffer):
            raise ValueError(f"output of {name} is not in host memory")
        n_out, n_tok = int(t.ne[0]), int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3])
        y = np.ctypeslib.as_array((ctypes.c_float * (n_out * n_tok)).from_address(t.data))
        var = self.rho[name] * float(np.mean(np.square(y, dtype=np.float64)))
        y += self.rng.standard_normal(y.size, dtype=np.float32) * np.float32(math.sqrt(var))
        self.energy[name] = self.energy.get(name, 0.0) + var * n_out * n_tok
        self.tokens[name] = self.tokens.get(name, 0) + n_tok
