"""The JSON requirement report as one self-contained HTML page (``make report``).

The terminal table is made for CI logs; people who decide whether to trust
musicfs read a page: every requirement on one row, the commit and machine the
figures come from in the header, and for each measured requirement a small chart
of the value against its target and maximum, so "how far from the gate" is seen,
not computed. The page has no scripts and no external assets (it is archived as a
CI artefact and opened offline), and every piece of text from the report is
escaped: titles, notes and test ids are data, never markup.

Usage: ``python -m spec.html [JSON] [-o HTML]`` (defaults: build/requirements-report.json,
and the same path with ``.html``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from .catalogue import Requirement

DEFAULT_JSON = Path("build") / "requirements-report.json"
_COLOURS = {"pass": "#2e7d32", "functional-pass": "#2e7d32", "miss-target": "#b7791f",
            "fail": "#c62828", "functional-fail": "#c62828", "partial": "#b7791f",
            "unmeasured": "#b7791f", "skipped": "#757575", "full-size": "#1565c0", "planned": "#1565c0",
            "not-covered": "#757575"}
_CHART_W, _CHART_H, _PAD = 260, 40, 8
_LOG_SPAN = 100.0  # more than two decades between the smallest and largest figure: log scale

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#212121}
h1{font-size:1.4rem;margin:0 0 .5rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.5rem 0}
dl.facts dt{font-weight:600}
.counts span{display:inline-block;margin:.15rem .3rem .15rem 0;padding:.1rem .5rem;
 border-radius:.8rem;color:#fff;font-size:.85rem}
.alert{color:#c62828;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{border-bottom:1px solid #e0e0e0;padding:.3rem .4rem;text-align:left;vertical-align:top}
th{background:#f5f5f5;position:sticky;top:0}
td.status{font-weight:600;white-space:nowrap}
td.num{white-space:nowrap}
details summary{cursor:pointer}
details ul{margin:.2rem 0;padding-left:1rem}
.planned{color:#1565c0}
svg text{font-size:9px;font-family:system-ui,sans-serif}
"""


@dataclass(frozen=True)
class Scale:
    """Maps a value to an x position across the chart; log when the figures span decades."""

    low: float
    high: float
    log: bool

    @classmethod
    def covering(cls, values: Sequence[float]) -> Scale:
        low, high = min(values), max(values)
        if low > 0 and high / low > _LOG_SPAN:
            return cls(10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high)), True)
        low = min(0.0, low)
        high = high * 1.1 if high > 0 else 1.0
        return cls(low, high if high > low else low + 1.0, False)

    def x(self, value: float) -> float:
        if self.log:
            value = max(value, self.low)
            share = math.log10(value / self.low) / math.log10(self.high / self.low)
        else:
            share = (value - self.low) / (self.high - self.low)
        return _PAD + max(0.0, min(1.0, share)) * (_CHART_W - 2 * _PAD)


def requirement_of(entry: Mapping[str, Any]) -> Requirement:
    """The catalogue record again, to format figures exactly as the terminal does."""
    return Requirement(
        id=entry["id"], title=entry["title"], text=entry.get("text", ""), kind=entry["kind"],
        suite=entry.get("suite", ""), gate=bool(entry.get("gate")), source=entry.get("source", ""),
        unit=entry.get("unit"), better=entry.get("better"), target=entry.get("target"),
        maximum=entry.get("maximum"), statistic=entry.get("statistic"),
        stretch=entry.get("stretch"), covers=tuple(entry.get("covers") or ()),
        planned=entry.get("planned"))


def chart(entry: Mapping[str, Any]) -> str:
    """An inline SVG: a bar to the measured value, ticks at target and maximum."""
    req = requirement_of(entry)
    measured = entry.get("measured")
    if not req.measured or req.target is None or req.maximum is None:
        return ""
    figures = [req.target, req.maximum] + ([measured] if measured is not None else [])
    scale = Scale.covering(figures)
    colour = _COLOURS.get(entry.get("status", ""), "#757575")
    base_y, bar_h = 14, 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_W}" height="{_CHART_H}" '
             f'viewBox="0 0 {_CHART_W} {_CHART_H}" role="img" class="chart" '
             f'aria-label="{escape(_chart_label(req, measured, scale))}">'
             f"<title>{escape(_chart_label(req, measured, scale))}</title>",
             f'<line x1="{_PAD}" y1="{base_y + bar_h}" x2="{_CHART_W - _PAD}" '
             f'y2="{base_y + bar_h}" stroke="#9e9e9e"/>']
    if scale.log:  # a grey tick per decade says the scale is not linear
        decade = scale.low
        while decade <= scale.high * 1.0001:
            x = scale.x(decade)
            parts.append(f'<line x1="{x:.1f}" y1="{base_y + bar_h}" x2="{x:.1f}" '
                         f'y2="{base_y + bar_h + 3}" stroke="#9e9e9e"/>')
            decade *= 10
    if measured is not None:
        start = scale.x(scale.low)
        parts.append(f'<rect x="{start:.1f}" y="{base_y}" width="'
                     f'{max(1.0, scale.x(measured) - start):.1f}" height="{bar_h}" '
                     f'fill="{colour}"><title>measured {escape(req.format_value(measured))}'
                     '</title></rect>')
    for label, value, stroke, label_y in (
            (f"target {req.describe_target()}", req.target, "#2e7d32", 10),
            (f"maximum {req.describe_maximum()}", req.maximum, "#c62828", _CHART_H - 2)):
        x = scale.x(value)
        anchor = "end" if x > _CHART_W / 2 else "start"
        parts.append(f'<line x1="{x:.1f}" y1="{base_y - 4}" x2="{x:.1f}" '
                     f'y2="{base_y + bar_h + 4}" stroke="{stroke}" stroke-width="2">'
                     f'<title>{escape(label)}</title></line>'
                     f'<text x="{x:.1f}" y="{label_y}" text-anchor="{anchor}" fill="{stroke}">'
                     f'{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _chart_label(req: Requirement, measured: float | None, scale: Scale) -> str:
    value = req.format_value(measured) if measured is not None else "no value"
    kind = "log" if scale.log else "linear"
    return (f"{req.id}: measured {value}; target {req.describe_target()}; "
            f"maximum {req.describe_maximum()} ({kind} scale)")


def _tests(entry: Mapping[str, Any]) -> str:
    tests = entry.get("tests") or []
    measurements = entry.get("measurements") or []
    if not tests and not measurements:
        return ""
    items = [f"<li>{escape(t['nodeid'])} &mdash; {escape(str(t.get('outcome', '')))}"
             f" ({escape(str(t.get('level', '')))})</li>" for t in tests]
    req = requirement_of(entry)
    for m in measurements:
        samples = f", n={m['samples']}" if m.get("samples") else ""
        detail = f" &mdash; {escape(m['detail'])}" if m.get("detail") else ""
        items.append(f"<li>recorded {escape(req.format_value(m['value']))}{samples} by "
                     f"{escape(m['test'])}{detail}</li>")
    count = f"{len(tests)} test{'s' if len(tests) != 1 else ''}"
    return f"<details><summary>{count}</summary><ul>{''.join(items)}</ul></details>"


def _row(entry: Mapping[str, Any]) -> str:
    req = requirement_of(entry)
    status = str(entry.get("status", ""))
    measured = entry.get("measured")
    notes = [f'<span class="planned">planned: {escape(entry["planned"])}</span>'
             ] if entry.get("planned") else []
    if entry.get("note"):
        notes.append(escape(entry["note"]))
    cells = [
        f'<td id="{escape(req.id)}">{escape(req.id)}</td>',
        f'<td title="{escape(req.text)}">{escape(req.title)}</td>',
        f"<td>{escape(req.suite)}</td>",
        f'<td class="status" style="color:{_COLOURS.get(status, "#212121")}">'
        f"{escape(status)}</td>",
        f'<td class="num">{escape(req.format_value(measured)) if measured is not None else ""}'
        "</td>",
        f'<td class="num">{escape(req.describe_target())}</td>',
        f'<td class="num">{escape(req.describe_maximum())}</td>',
        f"<td>{chart(entry)}</td>",
        f"<td>{_tests(entry)}</td>",
        f"<td>{'<br>'.join(notes)}</td>",
    ]
    return f'<tr class="req {escape(status)}">{"".join(cells)}</tr>'


def _header(document: Mapping[str, Any]) -> str:
    run = document.get("run") or {}
    commit = run.get("commit")
    machine = run.get("machine") or {}
    commit_text = (f"{commit['sha']}{' (dirty: uncommitted changes)' if commit.get('dirty') else ''}"
                   if commit else "unknown (no git)")
    memory = machine.get("memory_total_mb")
    machine_text = ", ".join([f"{machine.get('cores', '?')} cores",
                              f"{memory} MiB memory" if memory else "memory unknown",
                              f"kernel {machine.get('kernel', '?')}",
                              f"Python {machine.get('python', '?')}"])
    gate = "on (--req-complete)" if run.get("complete_gate") else "off"
    facts = [("Generated", document.get("generated_at", "")), ("Commit", commit_text),
             ("Machine", machine_text), ("Catalogue", document.get("catalogue", "")),
             ("Completeness gate", gate)]
    counts = "".join(f'<span style="background:{_COLOURS.get(name, "#757575")}">'
                     f"{int(n)} {escape(name)}</span>"
                     for name, n in (document.get("summary") or {}).items())
    alerts = []
    if document.get("gate_failures"):
        alerts.append("Gate failed: " + ", ".join(map(escape, document["gate_failures"])))
    if run.get("complete_gate") and document.get("incomplete"):
        alerts.append("Not planned and without a passing check: "
                      + ", ".join(map(escape, document["incomplete"])))
    return ("<header><h1>musicfs requirements report</h1><dl class=\"facts\">"
            + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts)
            + f"</dl><p class=\"counts\">{len(document.get('requirements', []))} requirements: "
            + counts + "</p>" + "".join(f'<p class="alert">{a}</p>' for a in alerts)
            + "</header>")


def render_html(document: Mapping[str, Any]) -> str:
    """The whole page for a parsed JSON report."""
    head = ("ID", "Requirement", "Suite", "Status", "Measured", "Target", "Maximum",
            "Measured against target and maximum", "Tests", "Planned / note")
    rows = "\n".join(_row(entry) for entry in document.get("requirements", []))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>musicfs requirements report</title>"
            f"<style>{_CSS}</style></head><body>{_header(document)}<table><thead><tr>"
            + "".join(f"<th>{escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>\n{rows}\n</tbody></table></body></html>\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spec.html", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("json", nargs="?", type=Path, default=DEFAULT_JSON,
                        help=f"JSON report to render (default: {DEFAULT_JSON})")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="HTML file to write (default: the JSON path with .html)")
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"{args.json}: no requirement report yet; run `make test` (or any pytest run "
              "that checks a requirement) first", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{args.json}: cannot read the requirement report: {exc}", file=sys.stderr)
        return 2
    output = args.output or args.json.with_suffix(".html")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(document), encoding="utf-8")
    print(f"wrote {output} ({len(document.get('requirements', []))} requirements)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
