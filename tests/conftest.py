"""Shared fixtures: tiny HF models built once per session, llama.cpp's converter as the oracle.

Markers (registered in pyproject.toml):
    oracle  -- compares with llama.cpp's convert_hf_to_gguf.py. Skipped (loudly) when its source is
               missing, unless HQQ2GGUF_REQUIRE_ORACLE=1 (CI), which turns the skip into a failure.
    slow    -- builds a model, runs llama.cpp or the oracle, or compiles CUDA. Set here for every test that
               uses one of SLOW_FIXTURES (directly or through another fixture) or is marked oracle/gpu, and
               by hand elsewhere; ``python -m pytest -m "not slow"`` is the fast lane (README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import oracle
import pytest
import tiny_models

from hqq2gguf.options import SELF_CALIBRATED as PRODUCT_SELF_CALIBRATED


#: Fixtures that build models (tiny HF models; test_recipes' GGUFs, which llama-quantize then reads), run
#: llama.cpp's converter, or compile the CUDA sources for the CPU: a test that needs any of them, however
#: indirectly, is slow.
SLOW_FIXTURES = frozenset({"tiny_model_dir", "model_ggufs", "oracle_src", "oracle_gguf", "host_launcher"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES or item.get_closest_marker("oracle") or item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _default_calibration_off() -> Iterator[None]:
    """Quantizing calibrates on the model's own text by default (options.SELF_CALIBRATED); in-process tests of
    everything else, and the module- and session-wide fixtures they share, quantize without it (the bytes they
    pin were made so, and it saves seconds per conversion). Subprocesses always see the default."""
    import hqq2gguf.options

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hqq2gguf.options, "SELF_CALIBRATED", frozenset())
        yield


@pytest.fixture(autouse=True)
def _default_calibration_when_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests marked ``default_calibration`` see the product's default."""
    if request.node.get_closest_marker("default_calibration") is not None:
        import hqq2gguf.options

        monkeypatch.setattr(hqq2gguf.options, "SELF_CALIBRATED", PRODUCT_SELF_CALIBRATED)


def pytest_report_header(config: pytest.Config) -> str:
    reason = oracle.oracle_missing_reason()
    where = oracle.oracle_src() if reason is None else f"MISSING - {reason}"
    return f"hqq2gguf oracle (llama.cpp converter): {where}"


@pytest.fixture(scope="session")
def oracle_src() -> Path:
    """The llama.cpp source tree holding convert_hf_to_gguf.py; skip, or fail under CI, without it."""
    reason = oracle.oracle_missing_reason()
    if reason is not None:
        if oracle.oracle_required():
            pytest.fail(f"{oracle.REQUIRE_ENV} is set but the oracle is unavailable: {reason}", pytrace=False)
        pytest.skip(f"ORACLE MISSING, equivalence with llama.cpp NOT checked: {reason}")
    return oracle.oracle_src()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str | tiny_models.TinyModel], Path]:
    """``tiny_model_dir(name)``: the directory of tiny model ``name`` (see tiny_models.TINY_MODELS), or of a
    ``tiny_models.TinyModel`` given directly (a test's own shape variant, keyed by its name); built on
    first use and shared by the whole session. Treat it as read-only."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny_models")

    def get(name: str | tiny_models.TinyModel) -> Path:
        spec = tiny_models.TINY_MODELS[name] if isinstance(name, str) else name
        name = spec.name
        if name not in built:
            try:
                built[name] = tiny_models.build_tiny_model(spec, root / name, tokenizer_cache=root / ".tokenizers")
            except tiny_models.TokenizerUnavailable as exc:
                if oracle.oracle_required():
                    pytest.fail(f"{oracle.REQUIRE_ENV} is set but tiny model {name!r} cannot be built: {exc}",
                                pytrace=False)
                pytest.skip(f"TINY MODEL {name!r} NOT BUILT: {exc}")
        return built[name]

    return get


@pytest.fixture(scope="session")
def oracle_gguf(
    oracle_src: Path, tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Path]:
    """``oracle_gguf(name, outtype)``: llama.cpp's conversion of tiny model ``name``, made once."""
    made: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("oracle_gguf")

    def get(name: str, outtype: str) -> Path:
        if (name, outtype) not in made:  # convert to every outtype at once: the runs go in parallel
            model_dir = tiny_model_dir(name)
            todo = [t for t in dict.fromkeys((outtype, *oracle.OUTTYPES)) if (name, t) not in made]
            jobs = [(model_dir, t, root / f"{name}-{t}.gguf") for t in todo]
            for (_, t, _), path in zip(jobs, oracle.run_oracle_many(jobs)):
                made[(name, t)] = path
        return made[(name, outtype)]

    return get


@pytest.fixture(scope="session")
def host_launcher(tmp_path_factory: pytest.TempPathFactory):
    """The CUDA kernels compiled for the CPU (hqq2gguf.cuda.emulate): the GPU's stand-in in every CUDA test."""
    from hqq2gguf.cuda.emulate import HostLauncher, compiler
    from hqq2gguf.errors import UnsupportedError

    try:
        compiler()
    except UnsupportedError as exc:
        pytest.skip(f"CPU emulation of the kernels NOT run: {exc}")
    return HostLauncher(tmp_path_factory.mktemp("cuda_emulation"))
