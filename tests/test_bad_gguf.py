"""Corrupt or hostile GGUF input: one line naming the file (and key or tensor) and the reason, no output.

The files are written byte by byte (gguf_bytes.GgufBytes), so that every field can be made wrong on its own.
gguf.GGUFReader trusts the header's counts; hqq2gguf validates them first (read/gguf_header.py).
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
from bad_input_helpers import convert, convert_fails, run_cli
from gguf_bytes import VALID, GgufBytes, Q, V, kv, kv_str, kv_u32, tensor_info

ARCH = VALID.kvs[0]


def test_the_valid_file_converts(tmp_path: Path) -> None:
    """The base of every case below is fine: each failure is the corruption's doing."""
    code, output = convert(VALID.write(tmp_path / "ok.gguf"), tmp_path / "out")
    assert code == 0, output
    assert [t.name for t in gguf.GGUFReader(tmp_path / "out" / "m.gguf").tensors] == ["a.weight", "b.weight"]


CASES: dict[str, tuple[GgufBytes | bytes, tuple[str, ...]]] = {
    "version-1": (replace(VALID, version=1), ("GGUF version 1 is not supported (only versions 2 and 3)",)),
    "version-99": (replace(VALID, version=99), ("GGUF version 99 is not supported",)),
    "big-endian": (replace(VALID, version=3 << 24), ("big-endian GGUF files are not supported",)),
    "shorter-than-header": (b"GGUF\x03\x00\x00\x00\x00", ("truncated GGUF: 9 bytes",)),
    "duplicate-key": (replace(VALID, kvs=VALID.kvs + (kv_str("general.name", "again"),)),
                      ("metadata key 'general.name' appears twice",)),
    "reserved-key": (replace(VALID, kvs=VALID.kvs + (kv_u32("GGUF.version", 3),)),
                     ("metadata key 'GGUF.version' is reserved",)),
    "duplicate-tensor": (replace(VALID, infos=VALID.infos + (tensor_info("a.weight", (32,), Q.F32, 384),),
                                 data=bytes(512)),
                         ("tensor 'a.weight': tensor name appears twice",)),
    "misaligned-offset": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (32, 2), Q.F32, 132))),
                          ("tensor 'b.weight'", "data offset 132 is not a multiple of the alignment 32")),
    "data-beyond-eof": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (32, 2), Q.F32, 1 << 20))),
                        ("tensor 'b.weight'", "lies beyond the end of the file", "truncated")),
    "huge-tensor": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (1 << 20, 1 << 20), Q.F32, 128))),
                    ("tensor 'b.weight'", "lies beyond the end of the file")),
    "overlapping-data": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (32, 2), Q.F32, 96))),
                         ("tensor 'b.weight'", "overlaps that of 'a.weight'")),
    "absurd-tensor-count": (replace(VALID, n_tensors=1 << 62), ("header claims 4611686018427387904 tensors",)),
    "absurd-kv-count": (replace(VALID, n_kv=1 << 60), ("header claims 1152921504606846976 metadata key/value",)),
    "absurd-key-length": (replace(VALID, kvs=(ARCH, struct.pack("<Q", 1 << 59) + b"general.name")),
                          ("truncated GGUF: metadata key needs 576460752303423488 bytes at offset 77",)),
    "absurd-string-length": (replace(VALID, kvs=(ARCH, kv("general.name", V.STRING, struct.pack("<Q", 1 << 40)))),
                             ("truncated GGUF: string value of 'general.name' needs 1099511627776 bytes",)),
    "absurd-array-count": (replace(VALID, kvs=(ARCH, kv("x.ids", V.ARRAY, struct.pack("<IQ", V.UINT32, 1 << 61)))),
                           ("header claims 2305843009213693952 items in array 'x.ids'",)),
    "absurd-string-array": (replace(VALID, kvs=(ARCH, kv("x.s", V.ARRAY, struct.pack("<IQ", V.STRING, 1 << 40)))),
                            ("items in array 'x.s'",)),
    "unknown-value-type": (replace(VALID, kvs=(ARCH, kv("x.v", 99, b"\0" * 8))),
                           ("metadata key 'x.v' has unknown value type 99",)),
    "key-not-utf8": (replace(VALID, kvs=(ARCH, kv(b"\xff\xfe", V.UINT8, b"\0"))), ("not valid UTF-8",)),
    "unknown-ggml-type": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (32, 2), 200, 128))),
                          ("tensor 'b.weight'", "unknown ggml type 200")),
    "five-dims": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (2, 2, 2, 2, 2), Q.F32, 128))),
                  ("tensor 'b.weight'", "5 dimensions (ggml allows at most 4)")),
    "row-not-whole-blocks": (replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (20, 2), Q.Q8_0, 128))),
                             ("tensor 'b.weight'", "row length 20 is not a multiple of Q8_0's block size 32")),
    "alignment-not-power-of-2": (replace(VALID, kvs=VALID.kvs + (kv_u32("general.alignment", 24),), alignment=24),
                                 ("general.alignment is 24, not a power of two",)),
    "alignment-wrong-type": (replace(VALID, kvs=VALID.kvs + (kv_str("general.alignment", "32"),)),
                             ("general.alignment has type STRING, expected UINT32",)),
    "truncated-tensor-table": (VALID.encode()[:-(len(VALID.data) + 40)], ("truncated GGUF",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_gguf(tmp_path: Path, case: str) -> None:
    content, needles = CASES[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(content.encode() if isinstance(content, GgufBytes) else content)
    convert_fails(path, tmp_path / "out", str(path), *needles)


def test_missing_architecture(tmp_path: Path) -> None:
    path = replace(VALID, kvs=VALID.kvs[1:]).write(tmp_path / "bad.gguf")
    convert_fails(path, tmp_path / "out", str(path), "no general.architecture")


def test_inspect_and_diff_refuse_cleanly(tmp_path: Path) -> None:
    """The other commands that read GGUF files validate them the same way."""
    bad = replace(VALID, n_kv=1 << 60).write(tmp_path / "bad.gguf")
    good = VALID.write(tmp_path / "good.gguf")
    for args in (("inspect", str(bad)), ("diff", str(bad), str(good)), ("diff", str(good), str(bad))):
        code, output = run_cli(*args)
        assert code == 1 and "Traceback" not in output, output
        left = bad.stat().st_size - 24
        expected = (f"error: {bad}: header claims 1152921504606846976 metadata key/value pairs but the {left} bytes "
                    f"left in the file hold at most {left // 13}: corrupt or truncated")
        assert [line for line in output.splitlines() if line.startswith("error:")] == [expected], output
