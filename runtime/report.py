"""The terminal table of ``hqq2gguf validate`` (``--json`` prints ``ValidationReport.to_dict()`` instead).

Kept apart from the validation itself so that the numbers and their presentation change independently;
every number shown is a field of the report, so the table and the JSON never disagree.
"""

from __future__ import annotations

from hqq2gguf.runtime.metrics import EvalResult
from hqq2gguf.runtime.structure import Check
from hqq2gguf.runtime.validate import Measurement, ValidationReport, Verdict

_WIDTH = 26


def format_report(report: ValidationReport) -> list[str]:
    """The report as lines of text: context, structural checks, one block per measurement, verdict."""
    lines = [f"model:      {report.model}",
             f"reference:  {report.reference}",
             f"file type:  {report.file_type} ({report.level} limits)",
             f"text:       {report.text}",
             "",
             "structure"]
    lines += [_check_line(c) for c in report.checks]
    for m in report.measurements:
        lines += ["", *_measurement_lines(m)]
    lines.append("")
    if report.passed:
        lines.append("PASS")
    else:
        failures = report.failures()
        lines.append(f"FAIL ({len(failures)} problem{'s' if len(failures) != 1 else ''})")
        lines += [f"  - {f}" for f in failures]
    return lines


def _check_line(c: Check) -> str:
    mark = "ok" if c.ok else ("FAIL" if c.failed else "warn")
    return f"  [{mark:^4}] {c.name:<{_WIDTH}} {c.detail}"


def _measurement_lines(m: Measurement) -> list[str]:
    r = m.result
    verdicts = {v.metric: v for v in m.verdicts}
    rows = [
        ("mean KLD", f"{r.kld_mean:.5f} ± {r.kld_unc:.5f}", verdicts.get("mean KLD")),
        ("KLD p99", f"{r.kld_p99:.5f}", verdicts.get("KLD p99")),
        ("KLD max", f"{r.kld_max:.5f}", None),
        ("top-1 agreement", f"{100 * r.same_top:.2f}% ± {100 * r.same_top_unc:.2f}%", verdicts.get("top-1 agreement")),
        ("PPL", f"{r.ppl:.4f} ± {r.ppl_unc:.4f}", None),
        ("PPL (reference)", f"{r.ppl_ref:.4f} ± {r.ppl_ref_unc:.4f}", None),
        ("PPL ratio", f"{r.ppl / r.ppl_ref:.4f}", verdicts.get("PPL ratio")),
    ]
    head = f"numbers: {m.label} ({_timing(r)})"
    return [head, *(f"  {name:<{_WIDTH + 2}} {value:<24} {_limit(v)}".rstrip() for name, value, v in rows)]


def _limit(v: Verdict | None) -> str:
    if v is None:
        return ""
    limit = f"{100 * v.limit:.0f}%" if v.metric == "top-1 agreement" else f"{v.limit:g}"
    return f"{v.op} {limit:<8} {'ok' if v.passed else 'FAIL'}"


def _timing(r: EvalResult) -> str:
    return f"{r.n_tokens_scored} tokens scored, model {r.test_seconds:.1f} s, reference {r.ref_seconds:.1f} s"
