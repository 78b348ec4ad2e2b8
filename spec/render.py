"""The requirement table printed at the end of a pytest run, drawn with rich.

It is read most often in CI logs, so it is built to survive them: a fixed width
and plain ASCII borders without colour when the output is not a terminal, and
requirements that no check covered are folded into a short per-suite list rather
than dropped, so gaps stay visible without burying the rows that matter.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .catalogue import SUITE_ORDER
from .report import STATUSES, Status, summary

CI_WIDTH = 160

_LABELS = {
    "pass": "pass", "miss-target": "miss target", "fail": "FAIL",
    "functional-pass": "functional pass", "functional-fail": "functional FAIL",
    "partial": "partial", "unmeasured": "no value", "skipped": "skipped",
    "not-covered": "not covered",
}
_STYLES = {
    "pass": "green", "functional-pass": "green", "miss-target": "yellow",
    "fail": "bold red", "functional-fail": "bold red", "partial": "yellow",
    "unmeasured": "yellow", "skipped": "dim", "not-covered": "dim",
}
_MAX_TESTS_SHOWN = 2


def verdict_label(status: Status) -> str:
    """The verdict as the table shows it; a miss on an ungated requirement says so."""
    label = _LABELS[status.status]
    if status.status == "fail" and status.value is not None and not status.requirement.gate:
        label += " (not gated)"
    if status.requirement.kind == "composite" and status.status == "pass":
        label += " (via parts)"
    return label


def render(statuses: Mapping[str, Status], *, color: bool, width: int | None = None,
           suites: Iterable[str] = (), report_path: str | None = None) -> str:
    """The whole end-of-run report as text (with ANSI styles only when ``color``)."""
    console = Console(file=io.StringIO(), width=width or CI_WIDTH, force_terminal=color,
                      no_color=not color, color_system="standard" if color else None,
                      highlight=False, emoji=False, soft_wrap=False, legacy_windows=False)
    covered = [status for status in statuses.values() if status.covered]
    console.print(_table(covered, color))
    _print_not_covered(console, [s for s in statuses.values() if not s.covered], set(suites))

    counts = summary(statuses)
    parts = [f"{counts[name]} {_LABELS[name]}" for name in STATUSES if name in counts]
    console.print(f"{len(statuses)} requirements: " + ", ".join(parts), style="bold",
                  soft_wrap=True)
    if report_path:
        console.print(f"JSON report: {report_path}", soft_wrap=True)
    failures = [status for status in statuses.values() if status.gate_failed]
    for status in failures:
        req = status.requirement
        worst = next(m for m in status.measurements if m.value == status.value)
        detail = f" - {worst.detail}" if worst.detail else ""
        console.print(Text(
            f"GATE FAILED {req.id} ({req.title}): measured {req.format_value(status.value)}, "
            f"maximum {req.describe_maximum()} [{worst.test}]{detail}", style="bold red"),
            soft_wrap=True)
    if failures:
        console.print(Text("The run fails: a gated requirement missed its maximum "
                           "(even where its test passed).", style="bold red"), soft_wrap=True)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def _table(covered: list[Status], color: bool) -> Table:
    table = Table(title="musicfs requirements checked in this run", title_justify="left",
                  box=box.SIMPLE_HEAD if color else box.ASCII2, show_edge=not color)
    table.add_column("ID", no_wrap=True)
    table.add_column("Requirement", max_width=40, overflow="ellipsis", no_wrap=True)
    table.add_column("Measured", max_width=30)
    table.add_column("Target", no_wrap=True)
    table.add_column("Maximum", no_wrap=True)
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Tests", overflow="fold", ratio=1)
    for status in covered:
        req = status.requirement
        target = req.describe_target()
        if req.stretch is not None:
            target += f" (stretch {req.format_value(req.stretch)})"
        table.add_row(req.id, req.title, _measured_cell(status), target,
                      req.describe_maximum(),
                      Text(verdict_label(status), style=_STYLES[status.status]),
                      _tests_cell(status))
    if not covered:
        table.add_row("-", "no requirement was checked by the tests that ran", "", "", "", "", "")
    return table


def _measured_cell(status: Status) -> str:
    req = status.requirement
    if status.value is None:
        return ""
    worst = next(m for m in status.measurements if m.value == status.value)
    extra = [req.statistic] if req.statistic != "single" else []
    if worst.samples:
        extra.append(f"n={worst.samples}")
    if len(status.measurements) > 1:
        extra.append(f"worst of {len(status.measurements)}")
    suffix = f" ({', '.join(extra)})" if extra else ""
    return f"{req.format_value(status.value)}{suffix}"


def _tests_cell(status: Status) -> str:
    if status.requirement.kind == "composite":
        return status.note
    names = []
    for nodeid, outcome in status.tests.items():
        name = nodeid.rsplit("::", 1)[-1]
        names.append(name if outcome == "passed" else f"{name} {outcome.upper()}")
    shown = names[:_MAX_TESTS_SHOWN]
    if len(names) > _MAX_TESTS_SHOWN:
        shown.append(f"+{len(names) - _MAX_TESTS_SHOWN} more")
    return ", ".join(shown)


def _print_not_covered(console: Console, missing: list[Status], suites: set[str]) -> None:
    if not missing:
        console.print("Every requirement was checked in this run.")
        return
    listed = [s for s in missing if not suites or s.requirement.suite in suites]
    hidden = len(missing) - len(listed)
    heading = f"Not covered in this run ({len(listed)}"
    heading += f"; {hidden} more of other suites, in the JSON report)" if hidden else ")"
    console.print(Text(heading + ":", style="bold"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(style=_STYLES["not-covered"])
    for suite in SUITE_ORDER:
        ids = [s.requirement.id for s in listed if s.requirement.suite == suite]
        if ids:
            grid.add_row(f"  {suite} ({len(ids)}):", ", ".join(ids))
    console.print(grid)
