"""Per-tensor types: hqq2gguf.recipes.plan_types() == what llama.cpp's llama-quantize chooses.

The oracle is llama.cpp itself (``llama_model_quantize`` from llama-cpp-python, tests/llama_quantize.py),
run on the same F16 GGUF with the same recipe and options, for every tensor of:

* tiny HF models converted by hqq2gguf;
* synthetic GGUFs with the hyper-parameters of 70B, MoE, Falcon, fused-QKV and odd-shaped models;

x every recipe x llama-quantize option combinations. llama.cpp runs these as dry runs (types read from
its log: fast); test_dry_run_reports_real_types checks that log against real quantizations. Then
llama.cpp's own snapshot schemas (tests/snapshots/*.schema) of real dense models, and the dev models'
F16 GGUFs when present (slow).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

import oracle
import tiny_models
from llama_quantize import QuantJob, QuantResult, run_quantize
from recipe_models import HF_MODELS, SNAPSHOT_MODELS, SYNTHETIC_MODELS, read_snapshot, snapshot_tensors
from hqq2gguf.convert import convert
from hqq2gguf.errors import Hqq2GgufError, OptionError
from hqq2gguf.options import ConvertOptions, OutType
from hqq2gguf.recipes import (
    ModelInfo, QuantOptions, Recipe, TensorInfo, llama_order, parse_tensor_type, plan_types, read_gguf_model,
    shape_fallback, use_more_bits,
)

Q = gguf.GGMLQuantizationType

# llama-quantize option combinations, as on its command line
OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "pure": dict(pure=True),
    "out-emb-types": dict(output_tensor_type="q4_1", token_embedding_type="q8_0"),
    "tensor-type": dict(tensor_type=(r"blk\.0\.attn_v=q8_0", r"blk\.[0-2]\.ffn_down=q5_0", "ffn_(up|gate)=Q5_K",
                                     "ATTN_=iq4_nl", "token_embd=q6_k")),
    "emb-type+tensor-type": dict(token_embedding_type="q8_0", tensor_type=("token_embd=q4_0", "output=q5_1")),
    "leave-output": dict(leave_output_tensor=True),
}

UNBUILT: dict[str, str] = {}  # HF model -> why it could not be built
# F16 GGUFs of the dev models (benchmarks/get_dev_models.py); CI has none, and these tests skip naming the path.
DEV_MODELS = Path(os.environ.get("HQQ2GGUF_DEV_MODELS", Path(__file__).resolve().parents[2] / "models" / "oracle"))
SNAPSHOT_DIR = oracle.DEFAULT_SRC / "tests" / "snapshots"


def quant_options(option_set: str) -> QuantOptions:
    return QuantOptions.from_cli(**OPTION_SETS[option_set])


def quant_job(src: Path, recipe: Recipe, option_set: str, *, dry_run: bool) -> QuantJob:
    opts = OPTION_SETS[option_set]
    return QuantJob(
        str(src), int(recipe.file_type),
        output_tensor_type=opts.get("output_tensor_type"),
        token_embedding_type=opts.get("token_embedding_type"),
        tensor_types=tuple(tuple(s.split("=", 1)) for s in opts.get("tensor_type", ())),
        pure=opts.get("pure", False), leave_output_tensor=opts.get("leave_output_tensor", False), dry_run=dry_run)


@functools.lru_cache(maxsize=None)
def read_model(src: Path) -> tuple[ModelInfo, list[TensorInfo]]:
    return read_gguf_model(src)


def assert_same_plan(src: Path, recipe: Recipe, options: QuantOptions, expected: QuantResult) -> None:
    """Our plan for ``src`` equals llama.cpp's result: every tensor, same order; or both refuse."""
    info, tensors = read_model(src)
    if not expected.ok:
        with pytest.raises(Hqq2GgufError):
            plan_types(tensors, info, recipe, options)
        return
    ours = plan_types(tensors, info, recipe, options)
    diffs = [(n, ours.get(n), expected.types.get(n)) for n in {*ours, *expected.types}
             if ours.get(n) != expected.types.get(n)]
    assert not diffs, f"{len(diffs)} tensors differ (name, ours, llama.cpp): {sorted(diffs, key=str)[:20]}"
    assert list(ours) == list(expected.types), "tensor order differs from llama-quantize's output"


# ---------------------------------------------------------------- the models and llama.cpp's answers

@pytest.fixture(scope="session")
def model_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """F16 GGUF of every model of recipe_models; an HF model whose tokenizer cannot be built here is left
    out (its tests skip with the reason, in UNBUILT)."""
    root = tmp_path_factory.mktemp("recipe_models")
    paths = {name: spec.write(root / f"{name}.gguf") for name, spec in SYNTHETIC_MODELS.items()}
    for name, spec in HF_MODELS.items():
        try:
            model_dir = tiny_models.build_tiny_model(spec, root / name)
        except (tiny_models.TokenizerUnavailable, ImportError) as e:  # e.g. sentencepiece vs protobuf
            UNBUILT[name] = f"{type(e).__name__}: {e}"
            continue
        out = root / f"{name}-f16.gguf"
        convert(model_dir, ConvertOptions(outtype=OutType("f16"), output=out, force=True))
        paths[name] = out
    return paths


@pytest.fixture(scope="session")
def oracle_types(model_ggufs: dict[str, Path]) -> dict[tuple[str, Recipe, str], QuantResult]:
    """llama.cpp's types for every model x recipe x option set, computed in one parallel run."""
    keys = [(m, r, o) for m in model_ggufs for r in Recipe for o in OPTION_SETS]
    jobs = [quant_job(model_ggufs[m], r, o, dry_run=True) for m, r, o in keys]
    return dict(zip(keys, run_quantize(jobs)))


@pytest.mark.parametrize("option_set", list(OPTION_SETS))
@pytest.mark.parametrize("recipe", list(Recipe), ids=lambda r: r.value)
@pytest.mark.parametrize("model", [*HF_MODELS, *SYNTHETIC_MODELS])
def test_types_match_llama_quantize(model: str, recipe: Recipe, option_set: str,
                                    model_ggufs: dict[str, Path], oracle_types: dict) -> None:
    if model not in model_ggufs:
        pytest.skip(f"TINY MODEL {model} NOT BUILT, types NOT checked: {UNBUILT.get(model)}")
    expected = oracle_types[(model, recipe, option_set)]
    assert_same_plan(model_ggufs[model], recipe, quant_options(option_set), expected)


IMATRIX_MODELS = ("llama-h256-gqa4-l16", "llama-h576-gqa3-l8", "syn-moe-4x-l16")
IMATRIX_RECIPES = (Recipe.IQ4_XS, Recipe.IQ4_NL, Recipe.Q4_0, Recipe.Q5_0, Recipe.Q4_K_M, Recipe.Q2_K)


def write_full_imatrix(src: Path, dst: Path) -> Path:
    """A GGUF imatrix with an entry for every quantizable matrix of ``src`` (all ones; counts 1 per expert)."""
    w = gguf.GGUFWriter(dst, arch="imatrix")
    w.add_array("imatrix.datasets", ["none"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    for t in gguf.GGUFReader(src).tensors:
        if len(t.shape) >= 2 and t.name != "token_embd.weight":
            n_expert = int(t.shape[2]) if len(t.shape) == 3 else 1
            w.add_tensor(t.name + ".in_sum2", np.ones(n_expert * int(t.shape[0]), np.float32))
            w.add_tensor(t.name + ".counts", np.ones(n_expert, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="session")
def imatrix_oracle(model_ggufs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """llama.cpp's types WITH an imatrix (its has_imatrix rules) for a few models x recipes, one run."""
    root = tmp_path_factory.mktemp("imatrix")
    keys = [(m, r) for m in IMATRIX_MODELS if m in model_ggufs for r in IMATRIX_RECIPES]
    files = {m: write_full_imatrix(model_ggufs[m], root / f"{m}.imatrix.gguf") for m, _ in keys}
    jobs = [QuantJob(str(model_ggufs[m]), int(r.file_type), dry_run=True, imatrix=str(files[m])) for m, r in keys]
    return dict(zip(keys, run_quantize(jobs)))


@pytest.mark.parametrize("recipe", IMATRIX_RECIPES, ids=lambda r: r.value)
@pytest.mark.parametrize("model", IMATRIX_MODELS)
def test_types_with_an_imatrix_match_llama_quantize(model: str, recipe: Recipe, model_ggufs: dict[str, Path],
                                                    imatrix_oracle: dict) -> None:
    """--imatrix changes llama.cpp's choice (IQ4_* ffn_down not raised to Q5_K; Q4_0/Q5_0's first eighth of
    ffn_down raised to Q4_1/Q5_1): our plan with has_imatrix must follow, and differ from the plan without."""
    if model not in model_ggufs:
        pytest.skip(f"TINY MODEL {model} NOT BUILT, types NOT checked: {UNBUILT.get(model)}")
    expected = imatrix_oracle[(model, recipe)]
    assert expected.ok, expected.log_tail
    assert_same_plan(model_ggufs[model], recipe, QuantOptions(has_imatrix=True), expected)
    info, tensors = read_model(model_ggufs[model])
    if recipe in (Recipe.IQ4_XS, Recipe.IQ4_NL, Recipe.Q4_0, Recipe.Q5_0) and info.n_layer >= 8:
        assert plan_types(tensors, info, recipe, QuantOptions()) != expected.types


def test_every_model_quantizes_by_default(model_ggufs: dict[str, Path], oracle_types: dict) -> None:
    """Guard against a vacuous suite: llama.cpp succeeded for every model with default options."""
    failed = [(m, r.value) for (m, r, o), res in oracle_types.items() if o == "default" and not res.ok]
    assert not failed


@pytest.mark.parametrize("model", ["syn-moe-4x-l16", "syn-odd-shapes", "llama2"])
def test_dry_run_reports_real_types(model: str, model_ggufs: dict[str, Path]) -> None:
    """The types parsed from a dry run's log are those of the file a real quantization writes."""
    src = model_ggufs.get(model) or pytest.skip(f"TINY MODEL {model} NOT BUILT: {UNBUILT.get(model)}")
    keys = [(r, o) for r in Recipe for o in ("default", "tensor-type")]
    real = run_quantize([quant_job(src, r, o, dry_run=False) for r, o in keys])
    dry = run_quantize([quant_job(src, r, o, dry_run=True) for r, o in keys])
    for (r, o), a, b in zip(keys, real, dry):
        assert a.ok and b.ok and a.file_size and a.types == b.types and list(a.types) == list(b.types), (r, o)


def test_rules_are_exercised(model_ggufs: dict[str, Path], oracle_types: dict) -> None:
    """The models trigger the rules they are meant to: a mismatch test passing on a model where no rule
    fires would prove little."""
    def types(model: str, recipe: Recipe, option_set: str = "default") -> dict[str, Q]:
        return oracle_types[(model, recipe, option_set)].types
    assert types("syn-llama-70b", Recipe.Q3_K_M)["blk.40.attn_v.weight"] == Q.Q5_K
    assert types("syn-llama-65b", Recipe.Q3_K_M)["blk.40.attn_v.weight"] == Q.Q4_K
    assert types("syn-mixtral-8x", Recipe.Q4_K_M)["blk.1.attn_k.weight"] == Q.Q8_0
    assert types("syn-falcon-tied", Recipe.Q4_K_M)["token_embd.weight"] == Q.Q8_0
    assert types("syn-odd-shapes", Recipe.Q4_K_M)["blk.3.ffn_down.weight"] == Q.F16
    odd = types("syn-odd-shapes", Recipe.Q4_K_M)
    assert {odd[n] for n in ("position_embd.weight", "blk.0.ffn_gate_inp.weight", "blk.1.row.weight")} == {Q.F16}
    if "llama-h256-gqa4-l16" in model_ggufs:
        q4km = types("llama-h256-gqa4-l16", Recipe.Q4_K_M)
        more = [i for i in range(16) if q4km[f"blk.{i}.ffn_down.weight"] == Q.Q6_K]
        assert more == [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
        assert types("llama-h256-gqa4-l16", Recipe.Q2_K)["blk.5.attn_v.weight"] == Q.Q4_K  # GQA 4


# ---------------------------------------------------------------- llama.cpp's snapshot schemas

@pytest.mark.parametrize("schema", list(SNAPSHOT_MODELS))
def test_snapshot_schemas(schema: str) -> None:
    path = SNAPSHOT_DIR / f"{schema}.schema"
    if not path.is_file():
        pytest.skip(f"llama.cpp snapshot {path} not found (see tests/oracle.py for the source tree)")
    snap = read_snapshot(path, *SNAPSHOT_MODELS[schema])
    info, tensors = snapshot_tensors(snap)
    names = {t.name for t in tensors}
    checked = 0
    for ftype, (default, listed) in snap.sections.items():
        assert set(listed) <= names, f"[{ftype}] lists tensors the rebuilt model lacks: {set(listed) - names}"
        if ftype not in Recipe.__members__:
            continue
        recipe = Recipe(ftype)
        assert recipe.default_type == Q[default.upper()]
        ours = plan_types(tensors, info, recipe)
        expected = {n: Q[listed.get(n, default).upper()] for n in names}
        assert ours == expected, f"[{ftype}] {[(n, ours[n], expected[n]) for n in ours if ours[n] != expected[n]][:10]}"
        checked += 1
    assert checked >= 15


# ---------------------------------------------------------------- the dev models (slow)

@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(Recipe), ids=lambda r: r.value)
@pytest.mark.parametrize("gguf_name", ["SmolLM2-f16.gguf", "Qwen2.5-Coder-1.5B-f16.gguf"])
def test_dev_models(gguf_name: str, recipe: Recipe, dev_oracle: Callable[[str, Recipe], QuantResult]) -> None:
    src = DEV_MODELS / gguf_name
    if not src.is_file():
        pytest.skip(f"{src} not present")
    assert_same_plan(src, recipe, QuantOptions(), dev_oracle(gguf_name, recipe))


@pytest.fixture(scope="session")
def dev_oracle() -> Callable[[str, Recipe], QuantResult]:
    """llama.cpp's dry-run types for a dev model, all recipes at once."""
    cache: dict[str, dict[Recipe, QuantResult]] = {}

    def get(gguf_name: str, recipe: Recipe) -> QuantResult:
        if gguf_name not in cache:
            src = DEV_MODELS / gguf_name
            cache[gguf_name] = dict(zip(Recipe, run_quantize([quant_job(src, r, "default", dry_run=True)
                                                              for r in Recipe])))
        return cache[gguf_name][recipe]
    return get


# ---------------------------------------------------------------- unit tests of the pieces

def test_recipe_table() -> None:
    assert Recipe.Q4_K_M.file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert Recipe.parse("q4_k") is Recipe.Q4_K_M and Recipe.parse("Q5_K_S") is Recipe.Q5_K_S
    with pytest.raises(OptionError):
        Recipe.parse("Q7_K")
    assert len({r.file_type for r in Recipe}) == len(Recipe)
    assert Recipe.Q3_K_L.default_type == Q.Q3_K and Recipe.IQ4_XS.default_type == Q.IQ4_XS


def test_option_parsing() -> None:
    assert parse_tensor_type(r"ATTN_V\.weight=Q8_0") == (r"attn_v\.weight", Q.Q8_0)
    for bad in ("attn_v", "=q8_0", "attn_v=", "attn_v=q9_9"):
        with pytest.raises(OptionError):
            parse_tensor_type(bad)
    with pytest.raises(OptionError):
        QuantOptions(tensor_types=(("(", Q.Q8_0),))


def test_shape_fallback() -> None:
    assert [shape_fallback(t, 576) for t in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_XS, Q.TQ1_0)] == \
        [Q.Q4_0, Q.Q4_0, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.IQ4_NL, Q.Q4_0]
    assert shape_fallback(Q.Q4_K, 48) == Q.F16 and shape_fallback(Q.Q8_0, 48) == Q.F16
    assert shape_fallback(Q.Q4_K, 512) == Q.Q4_K


def test_explicit_type_that_does_not_fit_is_refused() -> None:
    """--output-tensor-type skips the shape fallback; llama.cpp then aborts, we raise."""
    info = ModelInfo("llama", 1, 4, 4)
    tensors = [TensorInfo("token_embd.weight", (8, 96)), TensorInfo("output.weight", (8, 96))]
    with pytest.raises(OptionError):
        plan_types(tensors, info, Recipe.Q8_0, QuantOptions(output_tensor_type=Q.Q6_K))


def test_llama_order() -> None:
    names = ["blk.10.attn_q.weight", "output.weight", "blk.2.ffn_up.weight", "blk.2.attn_k.weight", "a.weight"]
    assert llama_order(names) == ["a.weight", "output.weight", "blk.2.attn_k.weight", "blk.2.ffn_up.weight",
                                  "blk.10.attn_q.weight"]
