"""The reference HQQ solver (hqq2gguf.optimize): exact packing, never worse than llama.cpp, deterministic,
finite on hostile rows, config validation.

Every objective here is recomputed independently: the packed bytes are decoded by gguf-py (and libggml),
llama.cpp's answer comes from ggml_ref, and the weights from ``element_weights``.
"""

from __future__ import annotations

import functools

import gguf
import numpy as np
import pytest
import torch

from hqq2gguf import ggml_ref
from hqq2gguf.errors import InputError, OptionError, UnsupportedError
from hqq2gguf.optimize import (
    SOLVER_TYPES, Preset, SolverConfig, WeightMode, element_weights, encode, quantize_tensor, solve,
)
from hqq2gguf.optimize import core, llama_cpp_encoded, solver as solver_module
from hqq2gguf.qtypes import Kind, spec

Q = gguf.GGMLQuantizationType
ROWS, NE0 = 4, 512
FAST = SolverConfig(iterations=4)
THOROUGH = SolverConfig.preset(Preset.THOROUGH)


def _data(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return (rng.standard_normal((ROWS, NE0)) * 0.02).astype(np.float32)
    if kind == "student_t":
        return (rng.standard_t(3, (ROWS, NE0)) * 0.01).astype(np.float32)
    if kind == "realish":  # per-column and per-row scales, a few outlier columns, a dithered 16-level grid
        col = np.exp(rng.normal(0, 0.5, NE0))
        col[rng.choice(NE0, 4, replace=False)] *= 8
        x = rng.standard_normal((ROWS, NE0)) * col * np.exp(rng.normal(0, 0.3, (ROWS, 1))) * 0.02
        g = x.reshape(-1, 32)
        lo, step = g.min(1, keepdims=True), np.ptp(g, 1, keepdims=True) / 15
        g = lo + np.round((g - lo) / step) * step + rng.uniform(-0.5, 0.5, g.shape) * step
        return g.reshape(ROWS, NE0).astype(np.float32)
    raise ValueError(kind)


def _importance() -> np.ndarray:
    return np.exp(np.random.default_rng(7).normal(0, 1, NE0)).astype(np.float32)


@functools.cache
def _solved(qtype: Q, kind: str, mode: WeightMode, preset: Preset = Preset.FAST):
    x = _data(kind)
    imp = _importance() if mode is WeightMode.IMPORTANCE else None
    cfg = SolverConfig.preset(preset, weights=mode)
    return x, imp, solve(torch.from_numpy(x), qtype, importance=None if imp is None else torch.from_numpy(imp),
                         config=cfg)


def _objective(qtype: Q, x: np.ndarray, values: np.ndarray, mode: WeightMode, imp: np.ndarray | None) -> np.ndarray:
    """Independent per-block objective."""
    w = element_weights(torch.from_numpy(x).double(), spec(qtype), mode,
                        None if imp is None else torch.from_numpy(imp).double()).numpy()
    e = x.astype(np.float64) - values.astype(np.float64)
    return (w * e * e).reshape(-1, spec(qtype).block_size).sum(1)


CASES = ([(t, k, WeightMode.LLAMA, Preset.FAST) for t in SOLVER_TYPES for k in ("normal", "student_t", "realish")]
         + [(t, "student_t", m, Preset.FAST) for t in SOLVER_TYPES
            for m in (WeightMode.NONE, WeightMode.ABS, WeightMode.SQUARE, WeightMode.IMPORTANCE)]
         + [(t, "realish", WeightMode.LLAMA, Preset.THOROUGH) for t in SOLVER_TYPES])


@pytest.mark.parametrize("qtype,kind,mode,preset", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_bytes_decode_to_solution_and_never_worse(qtype: Q, kind: str, mode: WeightMode, preset: Preset) -> None:
    x, imp, sol = _solved(qtype, kind, mode, preset)
    blocks = sol.packed()
    assert blocks.shape == (ROWS, ggml_ref.ggml_row_size(qtype, NE0))
    decoded = gguf.quants.dequantize(blocks, qtype).reshape(ROWS, NE0)
    np.testing.assert_array_equal(decoded, sol.values)
    np.testing.assert_array_equal(ggml_ref.ggml_dequantize(qtype, blocks), sol.values)
    assert ggml_ref.ggml_validate_row_data(qtype, blocks)

    ours = _objective(qtype, x, decoded, mode, imp)
    llama_bytes = ggml_ref.ggml_quantize(qtype, x, imp)
    theirs = _objective(qtype, x, ggml_ref.ggml_dequantize(qtype, llama_bytes), mode, imp)
    np.testing.assert_array_equal(ours, sol.objective)
    np.testing.assert_array_equal(theirs, sol.baseline_objective)
    bad = np.flatnonzero(ours > theirs)
    assert bad.size == 0, f"{qtype.name}: blocks {bad[:8]} worse than llama.cpp ({ours[bad[:4]]} > {theirs[bad[:4]]})"
    assert ours.sum() < theirs.sum(), f"{qtype.name}/{kind}/{mode.value}: no improvement over llama.cpp"


@pytest.mark.parametrize("qtype", SOLVER_TYPES, ids=lambda t: t.name)
def test_deterministic_and_chunk_independent(qtype: Q) -> None:
    """Same bytes on a rerun, in smaller row parts (the per-block early stop must not see its part), and with
    another torch thread count, and with parts solved side by side by worker threads."""
    x = torch.from_numpy(_data("student_t", seed=3))
    a = quantize_tensor(x, qtype, config=FAST)
    b = quantize_tensor(x.clone(), qtype, config=FAST)
    c = quantize_tensor(x, qtype, config=SolverConfig(iterations=4, chunk_blocks=3))
    d = quantize_tensor(x, qtype, config=SolverConfig(iterations=4, chunk_blocks=5, threads=2))
    e = quantize_tensor(x, qtype, config=SolverConfig(iterations=4, workers=3))  # 3 parts on 3 threads
    f = encode(x, qtype, config=SolverConfig(iterations=4, workers=3, chunk_blocks=5))  # packed on the workers
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(a, d)
    np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(a, f.packed)
    whole = solve(x, qtype, config=FAST)
    x64 = x.double().numpy()
    np.testing.assert_allclose([f.sq_error, f.sq_norm, f.objective, f.baseline_objective],
                               [np.square(x64 - whole.values).sum(), np.square(x64).sum(), whole.objective.sum(),
                                whole.baseline_objective.sum()], rtol=1e-12)


@pytest.mark.parametrize("qtype", SOLVER_TYPES, ids=lambda t: t.name)
def test_default_iterations_per_type(qtype: Q) -> None:
    """Q4_K's and Q3_K's default is two iterations (chosen by KLD and time), every other type's four; an explicit
    count wins."""
    resolved = SolverConfig().for_type(qtype.name).iterations
    assert resolved == (2 if qtype in (Q.Q4_K, Q.Q3_K) else 4)
    assert SolverConfig(iterations=7).for_type(qtype.name).iterations == 7
    x = torch.from_numpy(_data("realish", seed=8))
    np.testing.assert_array_equal(quantize_tensor(x, qtype), quantize_tensor(x, qtype, config=SolverConfig(
        iterations=resolved)))


@pytest.mark.parametrize(("rows", "per_row", "chunk", "workers"),
                         [(1, 6, 4096, 2), (7, 6, 4096, 2), (100, 6, 13, 1), (100, 6, 3, 4), (5, 40, 4096, 8),
                          (4096, 6, 4096, 2), (3, 1, 1, 1)])
def test_row_parts_cover_every_row_once_within_the_chunk_bound(rows: int, per_row: int, chunk: int,
                                                               workers: int) -> None:
    parts = solver_module.row_parts(rows, per_row, chunk, workers)
    covered = [r for sl in parts for r in range(rows)[sl]]
    assert covered == list(range(rows))
    assert all(sl.stop - sl.start <= max(1, chunk // per_row) for sl in parts)  # one row at least
    assert len(parts) >= min(workers, rows)


@pytest.mark.parametrize("qtype", SOLVER_TYPES, ids=lambda t: t.name)
def test_default_weights_are_llama_cpps_except_where_kld_chose_abs(qtype: Q) -> None:
    x = torch.from_numpy(_data("realish", seed=6)).double()
    auto = element_weights(x, spec(qtype), WeightMode.AUTO, None)
    expected = x.abs() if qtype == Q.Q3_K else element_weights(x, spec(qtype), WeightMode.LLAMA, None)
    torch.testing.assert_close(auto, expected, rtol=0, atol=0)
    assert SolverConfig().weights is WeightMode.AUTO


def test_thorough_preset_is_at_least_as_good_in_total() -> None:
    """THOROUGH searches a superset of FAST's starts for longer; over a tensor it should not lose."""
    x = torch.from_numpy(_data("realish", seed=5))
    for qtype in (Q.Q4_0, Q.Q4_K, Q.Q6_K):
        fast, thorough = solve(x, qtype), solve(x, qtype, config=THOROUGH)
        assert thorough.objective.sum() <= fast.objective.sum() * (1 + 1e-6), qtype.name


def _hostile_rows() -> np.ndarray:
    rows = np.zeros((6, NE0), dtype=np.float32)
    rows[1] = 0.37  # constant
    rows[2, 77] = 5.0  # one outlier in zeros
    rows[3] = np.random.default_rng(1).standard_normal(NE0) * 1e-40  # subnormal magnitudes
    rows[4] = np.random.default_rng(2).standard_normal(NE0) * 0.01
    rows[4, 100] = -3.0  # one outlier in normal data
    rows[5] = -60000.0 * np.sign(np.random.default_rng(3).standard_normal(NE0))  # near the fp16 limit
    return rows


@pytest.mark.parametrize("mode", [WeightMode.LLAMA, WeightMode.ABS], ids=lambda m: m.value)
@pytest.mark.parametrize("qtype", SOLVER_TYPES, ids=lambda t: t.name)
def test_hostile_rows_give_finite_valid_blocks(qtype: Q, mode: WeightMode) -> None:
    x = _hostile_rows()
    sol = solve(torch.from_numpy(x), qtype, config=SolverConfig(weights=mode, iterations=3))
    blocks = sol.packed()
    assert ggml_ref.ggml_validate_row_data(qtype, blocks)
    decoded = gguf.quants.dequantize(blocks, qtype).reshape(x.shape)
    assert np.isfinite(decoded).all()
    np.testing.assert_array_equal(decoded, sol.values)
    assert (sol.objective <= sol.baseline_objective).all()
    zero_blocks = ~x.reshape(-1, spec(qtype).block_size).any(axis=1)
    assert (sol.objective[zero_blocks] == 0).all()


@pytest.mark.parametrize("kwargs", [
    {"p": 0.0}, {"p": 1.5}, {"beta0": -1.0}, {"beta0": float("inf")}, {"kappa": 0.5}, {"iterations": -1},
    {"range_factors": (0.0,)}, {"super_range_factors": (3.0,)}, {"workers": -1}, {"sub_scale_radius": 9},
    {"chunk_blocks": -1}, {"weights": "cubic"}, {"patience": -1}, {"threads": -2},
])
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(OptionError):
        SolverConfig(**kwargs)


def test_config_accepts_mode_names_and_plain_least_squares() -> None:
    cfg = SolverConfig(weights="square", p=2.0, range_factors=[1, 0.9])
    assert cfg.weights is WeightMode.SQUARE and not cfg.shrinks and cfg.range_factors == (1.0, 0.9)


def test_automatic_parts_hold_a_fixed_number_of_elements() -> None:
    """chunk_blocks 0: 2**18 elements per part whatever the block size; an explicit count is taken as given."""
    assert SolverConfig().blocks_per_part(256) == 1024
    assert SolverConfig().blocks_per_part(32) == 8192
    assert SolverConfig(chunk_blocks=5).blocks_per_part(256) == 5
    assert SolverConfig().blocks_per_part(1 << 20) == 1  # one block at least


def test_presets() -> None:
    assert SolverConfig.preset("fast") == SolverConfig()
    assert THOROUGH.iterations == 12 and THOROUGH.patience == 0 and len(THOROUGH.range_factors) == 5
    assert SolverConfig.preset("thorough", p=1.0).p == 1.0
    with pytest.raises(OptionError):
        SolverConfig.preset("quick")


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_K], ids=lambda t: t.name)
def test_no_extra_starts_and_no_iterations(qtype: Q) -> None:
    """llama.cpp's answer alone: zero iterations reproduce it; no extra starts still run."""
    x = torch.from_numpy(_data("realish"))
    same = solve(x, qtype, config=SolverConfig(range_factors=(), super_range_factors=(), iterations=0))
    np.testing.assert_array_equal(same.objective, same.baseline_objective)
    sol = solve(x, qtype, config=SolverConfig(range_factors=(), super_range_factors=()))
    assert (sol.objective <= sol.baseline_objective).all() and sol.objective.sum() < sol.baseline_objective.sum()


BLOCK_SCALE_TYPES = [t for t in SOLVER_TYPES if spec(t).kind is Kind.BLOCK]


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "importance"])
@pytest.mark.parametrize("qtype", BLOCK_SCALE_TYPES, ids=lambda t: t.name)
def test_repeated_starts_are_dropped_without_changing_a_byte(qtype: Q, weighted: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A start whose snapped scale (and offset) equal an earlier one's for a block (Q4_0's max/-8 IS llama.cpp's
    answer; on TQ*'s symmetric grid -d mirrors d) retraces it: dropping it must change no byte and no objective."""
    x = _data("realish")
    x[0, :64] = 0.0  # all-zero blocks: every start has d = 0
    x[1, 32:64] = -x[1, 32:64]
    imp = torch.from_numpy(_importance()) if weighted else None
    cfg = SolverConfig(weights=WeightMode.IMPORTANCE if weighted else WeightMode.LLAMA, range_factors=(1.0, 0.9))
    dropped: list[int] = []
    original = core.BestOfStarts.drop_repeats

    def counting(self: core.BestOfStarts, key: torch.Tensor) -> torch.Tensor | None:
        keep = original(self, key)
        dropped.append(0 if keep is None else int((~keep).sum()))
        return keep

    monkeypatch.setattr(core.BestOfStarts, "drop_repeats", counting)
    kept = solve(torch.from_numpy(x), qtype, importance=imp, config=cfg)
    monkeypatch.setattr(core.BestOfStarts, "drop_repeats", lambda self, key: None)  # every start runs
    full = solve(torch.from_numpy(x), qtype, importance=imp, config=cfg)
    np.testing.assert_array_equal(kept.packed(), full.packed())
    np.testing.assert_array_equal(kept.objective, full.objective)
    if not weighted and qtype in (Q.Q4_0, Q.Q5_0, Q.Q4_1, Q.Q5_1, Q.TQ1_0, Q.TQ2_0):
        assert sum(dropped) > 0, "llama.cpp's own answer should repeat a range start here"


def test_q8_0_without_importance_is_llama_cpps_own_blocks() -> None:
    """Q8_0 is left to llama.cpp when no importance is given (no measurable KLD gain, ten times the time); with
    importance, or when told to solve every type, the solver runs and does better on its objective."""
    x = torch.from_numpy(_data("student_t"))
    assert SolverConfig().leaves_to_llama_cpp("Q8_0", weighted=False)
    assert not SolverConfig().leaves_to_llama_cpp("Q8_0", weighted=True)
    assert not SolverConfig().leaves_to_llama_cpp("Q4_0", weighted=False)
    assert not SolverConfig(weights=WeightMode.SQUARE).leaves_to_llama_cpp("Q8_0", weighted=False)
    assert not THOROUGH.leaves_to_llama_cpp("Q8_0", weighted=False)
    plain = llama_cpp_encoded(x, Q.Q8_0, SolverConfig(workers=2, chunk_blocks=8))
    np.testing.assert_array_equal(plain.packed, ggml_ref.ggml_quantize(Q.Q8_0, x.numpy()).reshape(ROWS, -1))
    err = float(np.square(x.numpy().astype(np.float64) - ggml_ref.ggml_dequantize(Q.Q8_0, plain.packed)).sum())
    assert plain.sq_error == pytest.approx(err) and plain.objective == plain.baseline_objective == plain.sq_error
    solved = encode(x, Q.Q8_0, config=SolverConfig())
    assert solved.objective < solved.baseline_objective == pytest.approx(plain.sq_error)
    with pytest.raises(OptionError, match="Q9_9"):
        SolverConfig(llama_cpp_types=("Q9_9",))


def test_importance_mode_without_importance_is_llama() -> None:
    """A tensor the imatrix does not cover is solved as llama.cpp does without one: LLAMA's weights."""
    x = torch.from_numpy(_data("normal"))
    a = solve(x, Q.Q4_K, config=SolverConfig(weights=WeightMode.IMPORTANCE))
    b = solve(x, Q.Q4_K, config=SolverConfig(weights=WeightMode.LLAMA))
    np.testing.assert_array_equal(a.packed(), b.packed())


def test_input_errors() -> None:
    x = torch.from_numpy(_data("normal"))
    with pytest.raises(InputError):
        solve(x[:, :100], Q.Q4_0)
    with pytest.raises(InputError):
        solve(x[:0], Q.Q4_0)
    with pytest.raises(InputError):
        solve(x[:, :256], Q.Q4_K, importance=torch.ones(10))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError):
        solve(bad, Q.Q4_0)
    with pytest.raises(UnsupportedError):
        solve(x, Q.F16)
