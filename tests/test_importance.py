"""Column importance: llama.cpp's imatrix files (GGUF and legacy .dat), the data-free norm proxy, and the
options around them (--imatrix, --importance, --group-size, --seed) end to end on a tiny model."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from hqq2gguf.cli import main
from hqq2gguf.errors import InputError, OptionError
from hqq2gguf.calibrate import Importance, read_imatrix
from hqq2gguf.calibrate.proxy import derived_importance, derived_inputs, needed_norms, norm_importance
from hqq2gguf.recipes import Recipe
from test_quantize import SPEC

RNG = np.random.default_rng(7)


def write_gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]], *,
                       metadata: bool = True) -> Path:
    """An imatrix in llama.cpp's GGUF format: per tensor ``in_sum2`` (n_expert*ne0) and ``counts`` (n_expert)."""
    w = gguf.GGUFWriter(path, arch="imatrix")
    if metadata:
        w.add_array("imatrix.datasets", ["test.txt"])
        w.add_uint32("imatrix.chunk_count", 4)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", np.ascontiguousarray(sums, dtype=np.float32))
        w.add_tensor(name + ".counts", np.ascontiguousarray(counts, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_legacy_imatrix(path: Path, entries: dict[str, tuple[int, np.ndarray]], tail: bool = True) -> Path:
    """llama.cpp's legacy .dat: n_entries, then (name length, name, ncall, nval, values), then chunks + dataset."""
    out = [struct.pack("<i", len(entries))]
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size),
                values.astype("<f4").tobytes()]
    if tail:
        out += [struct.pack("<i", 10), struct.pack("<i", 4), b"data"]
    path.write_bytes(b"".join(out))
    return path


# --- reading -----------------------------------------------------------------------------------------

def test_gguf_imatrix_is_sums_over_counts(tmp_path: Path) -> None:
    sums = RNG.random(64).astype(np.float32) * 10
    experts = RNG.random(3 * 32).astype(np.float32)
    path = write_gguf_imatrix(tmp_path / "i.gguf", {
        "blk.0.attn_q.weight": (sums, np.array([4.0])),
        "blk.0.ffn_up_exps.weight": (experts, np.array([2.0, 0.0, 5.0])),
    })
    imp = read_imatrix(path)
    np.testing.assert_allclose(imp.entries["blk.0.attn_q.weight"][0], sums / 4, rtol=1e-6)
    e = imp.entries["blk.0.ffn_up_exps.weight"]
    np.testing.assert_allclose(e[0], experts[:32] / 2, rtol=1e-6)
    np.testing.assert_array_equal(e[1], np.ones(32))  # an expert never routed to: 1 everywhere (llama.cpp)
    np.testing.assert_allclose(e[2], experts[64:] / 5, rtol=1e-6)
    assert imp.for_tensor("blk.0.ffn_up_exps.weight", (3, 16, 32)).shape == (3, 32)
    assert imp.for_tensor("blk.0.attn_v.weight", (64, 64)) is None


def test_legacy_imatrix_is_divided_by_ncall(tmp_path: Path) -> None:
    v = RNG.random(48).astype(np.float32)
    for tail in (True, False):
        imp = read_imatrix(write_legacy_imatrix(tmp_path / f"i{tail}.dat", {"output.weight": (6, v)}, tail=tail))
        np.testing.assert_allclose(imp.entries["output.weight"][0], v / 6, rtol=1e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-7], "truncated|do not fit"),
    (lambda b: struct.pack("<i", 2**30) + b[4:], "not an imatrix"),
    (lambda b: b[:4] + struct.pack("<i", 2**30) + b[8:], "name length"),
    (lambda b: b"", "truncated"),
])
def test_damaged_legacy_imatrix_is_one_clear_error(tmp_path: Path, damage, message: str) -> None:
    good = write_legacy_imatrix(tmp_path / "good.dat", {"blk.0.attn_q.weight": (1, np.ones(64, np.float32))},
                                tail=False).read_bytes()
    bad = tmp_path / "bad.dat"
    bad.write_bytes(damage(good))
    with pytest.raises(InputError, match=message) as info:
        read_imatrix(bad)
    assert str(bad) in info.value.message


def test_unpaired_or_negative_gguf_imatrix_is_refused(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(tmp_path / "odd.gguf", arch="imatrix")
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="pairs"):
        read_imatrix(tmp_path / "odd.gguf")
    neg = write_gguf_imatrix(tmp_path / "neg.gguf", {"a.weight": (-np.ones(32), np.ones(1))})
    with pytest.raises(InputError, match="non-negative"):
        read_imatrix(neg)
    with pytest.raises(InputError, match="no such imatrix"):
        read_imatrix(tmp_path / "missing.gguf")


def test_size_mismatch_names_the_tensor() -> None:
    imp = Importance({"blk.0.attn_q.weight": np.ones((1, 48), np.float32)}, "x.gguf")
    with pytest.raises(InputError, match="another model") as info:
        imp.for_tensor("blk.0.attn_q.weight", (64, 64))
    assert info.value.tensor == "blk.0.attn_q.weight"


# --- the data-free proxy -------------------------------------------------------------------------------

def test_norm_importance_maps_each_matrix_to_the_norm_feeding_it() -> None:
    names = ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
             "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight",
             "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "output_norm.weight"]
    g_attn, g_ffn, g_out = (RNG.normal(size=8).astype(np.float32) for _ in range(3))
    norms = {"blk.0.attn_norm.weight": g_attn, "blk.0.ffn_norm.weight": g_ffn, "output_norm.weight": g_out}
    assert needed_norms(names) == set(norms)
    imp = norm_importance(names, norms)
    for n in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(imp.entries[n][0], g_attn ** 2, rtol=1e-6)
    for n in ("blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"):
        np.testing.assert_allclose(imp.entries[n][0], g_ffn ** 2, rtol=1e-6)
    np.testing.assert_allclose(imp.entries["token_embd.weight"][0], g_out ** 2, rtol=1e-6)  # tied output
    assert "blk.0.attn_output.weight" not in imp.entries and "blk.0.ffn_down.weight" not in imp.entries
    untied = norm_importance(names + ["output.weight"], norms)
    assert "output.weight" in untied.entries and "token_embd.weight" not in untied.entries


def test_derived_importance_of_attn_output_and_ffn_down() -> None:
    """ffn_down: product of gate's and up's row energies under ffn_norm; attn_output: the value row energy
    of each column's KV head (GQA: 4 heads share 2 KV heads of dim 3)."""
    hidden, inter, n_head, n_kv, hd = 6, 5, 4, 2, 3
    g_attn, g_ffn = RNG.normal(size=hidden), RNG.normal(size=hidden)
    v, gate, up = RNG.normal(size=(n_kv * hd, hidden)), RNG.normal(size=(inter, hidden)), RNG.normal(size=(inter, hidden))
    names = ["blk.0.attn_norm.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_norm.weight",
             "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"]
    assert derived_inputs(names) == {"blk.0.attn_v.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"}
    norms = {"blk.0.attn_norm.weight": g_attn, "blk.0.ffn_norm.weight": g_ffn}
    tensors = [("blk.0.attn_v.weight", v), ("blk.0.ffn_gate.weight", gate), ("blk.0.ffn_up.weight", up)]
    imp = derived_importance(names, norms, iter(tensors), n_head, n_kv).entries
    e_down = ((gate ** 2) @ g_ffn ** 2) * ((up ** 2) @ g_ffn ** 2)
    np.testing.assert_allclose(imp["blk.0.ffn_down.weight"][0], e_down / e_down.mean(), rtol=1e-5)
    e_v = (v ** 2) @ g_attn ** 2
    expect = np.array([e_v[(h // 2) * hd + d] for h in range(n_head) for d in range(hd)])
    np.testing.assert_allclose(imp["blk.0.attn_output.weight"][0], expect / expect.mean(), rtol=1e-5)
    np.testing.assert_allclose(imp["blk.0.attn_v.weight"][0], g_attn ** 2, rtol=1e-5)  # norms part kept


# --- end to end ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir(SPEC)  # the session's shared build of test_quantize's model


@pytest.fixture(scope="module")
def plain_q4(model_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "plain.gguf"
    result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--type", "Q4_K_M"])
    assert result.exit_code == 0, result.output
    return out


def _matrix_entries(model_dir: Path, tmp_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An imatrix covering every attention/FFN matrix of the tiny model, heavily skewed columns."""
    f16 = tmp_path / "f16.gguf"
    assert CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(f16)]).exit_code == 0
    out = {}
    for t in gguf.GGUFReader(f16).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            ne0 = int(t.shape[0])
            out[t.name] = ((RNG.random(ne0) ** 4 * 100).astype(np.float32), np.array([8.0]))
    return out


def _layout(path: Path) -> list[tuple[str, int, int]]:
    return [(t.name, int(t.tensor_type), int(t.n_bytes)) for t in gguf.GGUFReader(path).tensors]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imatrix_changes_blocks_and_is_deterministic(model_dir: Path, plain_q4: Path, tmp_path: Path) -> None:
    imatrix = write_gguf_imatrix(tmp_path / "m.imatrix.gguf", _matrix_entries(model_dir, tmp_path))
    outs = []
    for i in range(2):
        out = tmp_path / f"imat{i}.gguf"
        result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--type", "Q4_K_M",
                                           "--imatrix", str(imatrix)])
        assert result.exit_code == 0, result.output
        outs.append(out)
    assert _digest(outs[0]) == _digest(outs[1])
    options = json.loads(gguf.GGUFReader(outs[0]).fields["hqq2gguf.options"].contents())
    assert options["importance"] == "imatrix" and options["imatrix_sha256"] == _digest(imatrix)
    assert _layout(outs[0]) == _layout(plain_q4)  # the same tensor types and bytes, other blocks
    ours = {t.name: bytes(t.data) for t in gguf.GGUFReader(outs[0]).tensors}
    plain = {t.name: bytes(t.data) for t in gguf.GGUFReader(plain_q4).tensors}
    assert ours["blk.0.attn_q.weight"] != plain["blk.0.attn_q.weight"]
    assert ours["token_embd.weight"] == plain["token_embd.weight"]  # not in the imatrix: unchanged


def test_imatrix_of_another_model_is_refused(model_dir: Path, tmp_path: Path) -> None:
    foreign = write_gguf_imatrix(tmp_path / "foreign.gguf", {"blk.0.attn_q.weight": (np.ones(48), np.ones(1))})
    unrelated = write_legacy_imatrix(tmp_path / "unrelated.dat", {"model.layers.0.q": (1, np.ones(8, np.float32))})
    for imatrix, message in ((foreign, "another model"), (unrelated, "none of the imatrix")):
        out = tmp_path / "out" / "x.gguf"
        out.parent.mkdir(exist_ok=True)
        result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--type", "Q4_K_M",
                                           "--imatrix", str(imatrix)])
        assert result.exit_code == 1
        assert message in result.output and str(imatrix) in result.output
        assert "Traceback" not in result.output
        assert list(out.parent.iterdir()) == []


def test_norm_importance_end_to_end(model_dir: Path, plain_q4: Path, tmp_path: Path) -> None:
    out = tmp_path / "norms.gguf"
    result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--type", "Q4_K_M",
                                       "--importance", "norms"])
    assert result.exit_code == 0, result.output
    assert _layout(out) == _layout(plain_q4)
    ours = {t.name: bytes(t.data) for t in gguf.GGUFReader(out).tensors}
    plain = {t.name: bytes(t.data) for t in gguf.GGUFReader(plain_q4).tensors}
    assert ours["blk.0.ffn_down.weight"] == plain["blk.0.ffn_down.weight"]  # no norm feeds it
    assert ours != plain


def test_derived_importance_end_to_end(model_dir: Path, plain_q4: Path, tmp_path: Path) -> None:
    out = tmp_path / "derived.gguf"
    result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--type", "Q4_K_M",
                                       "--importance", "derived"])
    assert result.exit_code == 0, result.output
    ours = {t.name: bytes(t.data) for t in gguf.GGUFReader(out).tensors}
    plain = {t.name: bytes(t.data) for t in gguf.GGUFReader(plain_q4).tensors}
    assert ours["blk.0.ffn_down.weight"] != plain["blk.0.ffn_down.weight"]  # now weighted
    assert _layout(out) == _layout(plain_q4)


def test_group_size_and_seed(model_dir: Path, plain_q4: Path, tmp_path: Path) -> None:
    assert Recipe.parse("Q4_K_M").group_size == 32 and Recipe.parse("Q6_K").group_size == 16
    assert Recipe.parse("Q4_0").group_size == 32 and Recipe.parse("TQ1_0").group_size == 256
    with pytest.raises(OptionError, match="--group-size 64: Q4_K_M stores one scale per 32"):
        Recipe.parse("Q4_K_M").check_group_size(64)
    out = tmp_path / "seeded.gguf"
    result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--type", "Q4_K_M",
                                       "--group-size", "32", "--seed", "99"])
    assert result.exit_code == 0, result.output
    assert _digest(out) == _digest(plain_q4)  # the solver draws no random numbers
    bad = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(tmp_path / "g.gguf"), "--bits", "4",
                                    "--group-size", "128"])
    assert bad.exit_code == 1 and "cannot hold any other group size" in bad.output
    assert not (tmp_path / "g.gguf").exists()
