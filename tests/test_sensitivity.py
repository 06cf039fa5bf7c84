"""Sensitivity by noise injection (hqq2gguf.calibrate.sensitivity): the probe's noise reaches the model's output
in proportion, the layer x kind fit recovers known factors, gains are deterministic, and the measured
activations are llama-imatrix's statistics of the probe text."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from hqq2gguf.calibrate.sensitivity import (
    PROBE_TEXT, Sensitivity, _fit, _Probe, kind, layer, measure_sensitivity, probe_groups, probe_sequences,
)
from hqq2gguf.calibrate import column_importance
from hqq2gguf.sources import open_source
from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions, OutType


@pytest.fixture(scope="module")
def tiny_f16(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sens") / "llama2-f16.gguf"
    return convert(tiny_model_dir("llama2"), ConvertOptions(outtype=OutType.F16, output=out)).path


def _matrices(path: Path) -> list[str]:
    return [t.name for t in gguf.GGUFReader(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2]


def test_noise_moves_the_output_in_proportion(tiny_f16: Path) -> None:
    """No noise: no KLD. Twice the noise variance at one matrix: about twice the KLD (the linear regime the
    gains assume), and the noise each matrix received is reported per token."""
    names = _matrices(tiny_f16)
    with _Probe(tiny_f16, PROBE_TEXT, set(names), threads=2) as probe:
        assert probe.outputs == set(names)
        assert probe.kld({}, seed=0)[0] == pytest.approx(0.0, abs=1e-9)
        target = "blk.0.ffn_down.weight"
        k1, e1 = probe.kld({target: 1e-2}, seed=1)
        k2, e2 = probe.kld({target: 2e-2}, seed=1)
    assert set(e1) == {target} and e2[target] == pytest.approx(2 * e1[target], rel=0.05)
    assert k1 > 0 and 1.6 < k2 / k1 < 2.4, (k1, k2)


def test_fit_recovers_layer_and_kind_factors() -> None:
    """Group KLDs made from gain = exp(u[layer] + v[kind]) give back those gains."""
    rng = np.random.default_rng(0)
    kinds = ["attn_q.weight", "attn_v.weight", "ffn_down.weight"]
    names = [f"blk.{i}.{k}" for i in range(4) for k in kinds]
    u = {f"blk.{i}": rng.normal() for i in range(4)}
    v = {k: rng.normal() for k in kinds}
    truth = {n: math.exp(u[layer(n)] + v[kind(n)]) for n in names}
    results = []
    for members in [[n for n in names if layer(n) == f"blk.{i}"] for i in range(4)] + \
                   [[n for n in names if kind(n) == k] for k in kinds]:
        energy = {n: float(rng.uniform(0.5, 2.0)) for n in members}
        results.append((sum(truth[n] * energy[n] for n in members), energy))
    results.append((0.5, {"output.weight": 0.25}))  # probed alone: its gain is the measurement
    fitted = _fit(results, rounds=2000)
    for n in names:
        assert fitted[n] == pytest.approx(truth[n], rel=1e-3)
    assert fitted["output.weight"] == 2.0


def test_gains_are_deterministic_and_cover_every_matrix(tiny_f16: Path) -> None:
    names = _matrices(tiny_f16)
    a = measure_sensitivity(tiny_f16, names, seed=3, threads=2)
    b = measure_sensitivity(tiny_f16, names, seed=3, threads=2)
    assert a.gain == b.gain and set(a.gain) == set(names)
    assert all(g > 0 and math.isfinite(g) for g in a.gain.values())
    first = [n for n in names if layer(n) == "blk.0"]
    rest = [n for n in names if n not in first]
    assert a.record["probes"] == len(first) + len({layer(n) for n in rest}) + len({kind(n) for n in rest})
    for n in names:  # mean squared inputs, one per column
        act = a.activations.for_tensor(n, _shape(tiny_f16, n))
        assert act is not None and act.shape[1] == _shape(tiny_f16, n)[-1] and (act > 0).all()


def _shape(path: Path, name: str) -> tuple[int, ...]:
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return tuple(int(n) for n in reversed(t.shape))


def test_a_matrix_not_probed_gets_its_kinds_median() -> None:
    s = Sensitivity({"blk.0.ffn_down.weight": 1.0, "blk.1.ffn_down.weight": 3.0, "blk.0.attn_q.weight": 10.0})
    assert s.gain_of("blk.1.ffn_down.weight") == 3.0
    assert s.gain_of("blk.7.ffn_down.weight") == 2.0
    assert s.gain_of("blk.7.ffn_up_exps.weight") == 3.0  # no such kind probed: the median of all
    assert Sensitivity().gain_of("anything") == 1.0


def test_the_first_block_and_the_tensors_outside_the_blocks_are_probed_alone() -> None:
    names = [f"blk.{i}.{k}.weight" for i in range(3) for k in ("attn_q", "ffn_down")] + ["output.weight"]
    groups = probe_groups(names)
    assert groups["blk.0.attn_q.weight"] == ["blk.0.attn_q.weight"] and groups["output.weight"] == ["output.weight"]
    assert groups["blk.1"] == ["blk.1.attn_q.weight", "blk.1.ffn_down.weight"]
    assert groups["kind ffn_down.weight"] == ["blk.1.ffn_down.weight", "blk.2.ffn_down.weight"]
    assert len(groups) == 2 + 1 + 2 + 2


def test_probes_read_the_calibrations_text_when_it_is_long_enough() -> None:
    n, k = PROBE_TEXT.n_sequences, PROBE_TEXT.n_tokens
    written = [list(range(100 * i, 100 * i + k + 20)) for i in range(n + 2)]
    picked = probe_sequences(written, PROBE_TEXT)
    assert picked == [w[:k + 1] for w in written[:n]]
    assert probe_sequences(written[:n - 1], PROBE_TEXT) is None  # too few sequences
    assert probe_sequences([w[:k] for w in written], PROBE_TEXT) is None  # one stopped early
    assert probe_sequences([], PROBE_TEXT) is None


@pytest.mark.default_calibration
def test_self_calibrations_sequences_feed_the_probes(tiny_f16: Path) -> None:
    """The default calibration keeps the sequences the model wrote; the probes read their beginnings (and say
    so), deterministically; without them they write their own (other text: other gains)."""
    options = ConvertOptions.from_args(recipe="Q4_K_M", allocate=True, feedback=False)  # the allocation alone
    importance = column_importance(open_source(tiny_f16, options), options, tiny_f16)
    assert len(importance.sequences) == 16 and all(len(s) > 1 for s in importance.sequences)
    names = _matrices(tiny_f16)
    a = measure_sensitivity(tiny_f16, names, seed=0, threads=2, written=importance.sequences)
    b = measure_sensitivity(tiny_f16, names, seed=0, threads=2, written=importance.sequences)
    own = measure_sensitivity(tiny_f16, names, seed=0, threads=2)
    assert a.gain == b.gain and set(a.gain) == set(names)
    expected = probe_sequences(importance.sequences, PROBE_TEXT)
    assert expected is not None  # the tiny model writes whole sequences
    assert a.record["text"] == "the calibration's" and own.record["text"] == "written"
    assert a.record["tokens"] == sum(map(len, expected)) and a.gain != own.gain
