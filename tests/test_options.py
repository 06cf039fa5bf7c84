"""Option rules live in the options dataclasses, so the command line and the Python API refuse the same
combinations with the same message (nothing needs a model: every case fails before reading the input)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hqq2gguf.cli import main
from hqq2gguf.errors import OptionError
from hqq2gguf.options import ConvertOptions, Device, OutType
from hqq2gguf.recipes import QuantOptions, Recipe

# (command-line words after `convert MODEL`, the same request through the API, the message)
CONFLICTS = [
    (["--type", "Q4_K_M", "--bits", "4"], dict(recipe="Q4_K_M", bits=4), "--type and --bits are exclusive"),
    (["--type", "Q4_K_M", "--keep-lm-head-fp16", "--output-tensor-type", "Q8_0"],
     dict(recipe="Q4_K_M", keep_lm_head_fp16=True, output_tensor_type="Q8_0"),
     "--keep-lm-head-fp16 and --output-tensor-type are exclusive"),
    (["--group-size", "32"], dict(group_size=32), "--group-size and --seed need --type"),
    (["--seed", "7"], dict(seed=7), "--group-size and --seed need --type"),
    (["--type", "Q4_K_M", "--group-size", "64"], dict(recipe="Q4_K_M", group_size=64),
     "--group-size 64: Q4_K_M stores one scale per 32"),
    (["--pure"], dict(pure=True), "per-tensor type options need --type"),
    (["--tensor-type", "ffn_down=Q8_0"], dict(tensor_type=["ffn_down=Q8_0"]), "per-tensor type options need --type"),
    (["--outtype", "q8_0", "--type", "Q4_K_M"], dict(outtype="q8_0", recipe="Q4_K_M"),
     "--outtype q8_0 and --type are exclusive"),
    (["--device", "cuda"], dict(device="cuda"), "--device chooses where the quantization solver runs"),
    (["--importance", "norms"], dict(importance="norms"), "--imatrix and --importance need --type"),
    (["--type", "Q9_X"], dict(recipe="Q9_X"), "unknown quantization type 'Q9_X'"),
    (["--model-name", " "], dict(model_name=" "), "model name must not be empty"),
    (["--type", "Q4_K_M", "--importance", "norms", "--calibration", "self"],
     dict(recipe="Q4_K_M", importance="norms", calibration="self"), "--importance is the data-free alternative"),
    (["--type", "Q4_K_M", "--calibration", "none", "--save-calibration", "t.txt"],
     dict(recipe="Q4_K_M", calibration="none", save_calibration=Path("t.txt")),
     "--save-calibration needs calibration text"),
    # allocation (hqq2gguf.allocate)
    (["--target-size", "1GB", "--target-bpw", "4"], dict(target_size="1GB", target_bpw=4.0),
     "--target-size, --target-bpw and --allocate are exclusive"),
    (["--type", "Q4_K_M", "--allocate", "--target-size", "1GB"], dict(recipe="Q4_K_M", allocate=True,
                                                                      target_size="1GB"),
     "--target-size, --target-bpw and --allocate are exclusive"),
    (["--allocate"], dict(allocate=True), "--allocate re-allocates a recipe's bytes: give --type"),
    (["--target-size", "lots"], dict(target_size="lots"), "--target-size must be bytes or a size"),
    (["--target-size", "0"], dict(target_size="0"), "--target-size must be a size from 1 byte up"),
    (["--target-bpw", "-1"], dict(target_bpw=-1.0), "--target-bpw must be a number of bits per weight"),
]


@pytest.mark.parametrize("words, api, message", CONFLICTS, ids=[c[2][:30] for c in CONFLICTS])
def test_cli_and_api_refuse_alike(tmp_path: Path, words: list[str], api: dict, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        ConvertOptions.from_args(**api)
    assert message in caught.value.message
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "no-such-model"), *words])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"error: {caught.value.message}"


def test_constructor_holds_the_rules_not_only_from_args() -> None:
    with pytest.raises(OptionError, match="per-tensor type options need --type"):
        ConvertOptions(quant=QuantOptions(pure=True))
    with pytest.raises(OptionError, match="--group-size and --seed need --type"):
        ConvertOptions(seed=1)
    with pytest.raises(OptionError, match="stores one scale per 16"):
        ConvertOptions(recipe=Recipe.Q6_K, group_size=32)


def test_shorthands_resolve_to_the_long_forms() -> None:
    short = ConvertOptions.from_args(bits=3, keep_lm_head_fp16=True)
    long = ConvertOptions.from_args(recipe="Q3_K_M", output_tensor_type="F16")
    assert short == long and short.recipe is Recipe.Q3_K_M
    with_imatrix = ConvertOptions.from_args(recipe="Q4_K_M", imatrix=Path("x.imatrix"))
    assert with_imatrix.solver.weights.value == "importance" and with_imatrix.quant.has_imatrix
    assert ConvertOptions.from_args(recipe="Q4_K_M").solver.weights.value == "auto"
    plain = ConvertOptions.from_args(outtype="bf16", device="cpu")
    assert plain.outtype is OutType.BF16 and plain.device is Device.CPU and plain.recipe is None
