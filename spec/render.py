"""The requirement table printed at the end of a pytest run, drawn with rich.

It is read most often in CI logs, so it is built to survive them: a fixed width
and plain ASCII borders without colour when the output is not a terminal, and
requirements that no check covered are folded into a short per-suite list rather
than dropped, so gaps stay visible without burying the rows that matter.

The default view fits 100 columns (``CI_WIDTH``): one line per requirement, no
test names (they are in the JSON report, and in ``--req-verbose``), since a
table whose rows wrap across a dozen lines is a table nobody reads. Planned
requirements are listed with their reason, one entry each, so what musicfs does
not do yet is always on screen.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .catalogue import SUITE_ORDER
from .report import BAD, GOOD, PLANNED_BUT_CHECKED, STATUSES, Status, incomplete, summary

CI_WIDTH = 100
VERBOSE_WIDTH = 160  # --req-verbose outside a terminal: room for test names

_LABELS = {
    "pass": "pass", "miss-target": "miss target", "fail": "FAIL",
    "functional-pass": "functional pass", "functional-fail": "functional FAIL",
    "partial": "partial", "unmeasured": "no value", "skipped": "skipped",
    "full-size": "make perf only", "planned": "planned", "not-covered": "not covered",
}
_STYLES = {
    "pass": "green", "functional-pass": "green", "miss-target": "yellow",
    "fail": "bold red", "functional-fail": "bold red", "partial": "yellow",
    "unmeasured": "yellow", "skipped": "dim", "full-size": "cyan", "planned": "cyan", "not-covered": "dim",
}
_MAX_TESTS_SHOWN = 2


def verdict_label(status: Status, verbose: bool = True) -> str:
    """The verdict as the table shows it; a miss on an ungated requirement says so.

    The short form (default view) drops what the row already shows: a functional
    requirement has no measured value, a composite's Measured cell counts its parts.
    """
    if not verbose:
        label = _LABELS[status.status].removeprefix("functional ")
        if status.status == "fail" and status.value is not None and not status.requirement.gate:
            label += " (ungated)"
        return label
    label = _LABELS[status.status]
    if status.status == "fail" and status.value is not None and not status.requirement.gate:
        label += " (not gated)"
    if status.requirement.kind == "composite" and status.status == "pass":
        label += " (via parts)"
    return label


def render(statuses: Mapping[str, Status], *, color: bool, width: int | None = None,
           suites: Iterable[str] = (), report_path: str | None = None,
           complete: bool = False, verbose: bool = False) -> str:
    """The whole end-of-run report as text (with ANSI styles only when ``color``)."""
    console = Console(file=io.StringIO(), width=width or CI_WIDTH, force_terminal=color,
                      no_color=not color, color_system="standard" if color else None,
                      highlight=False, emoji=False, soft_wrap=False, legacy_windows=False)
    if complete:
        console.print("Completeness gate: on (--req-complete). A requirement not planned must "
                      "pass at its suite's level.")
    else:
        console.print("Completeness gate: off. Uncovered requirements are listed, not failed; "
                      "--req-complete gates them.")
    covered = [status for status in statuses.values() if status.covered]
    table, table_width = _table(covered, statuses, color, verbose, width or CI_WIDTH)
    if table_width > console.width:  # --req-verbose: test names rather than a fixed width
        console.width = table_width
    console.print(table)
    console.width = width or CI_WIDTH
    suites = set(suites)
    _print_not_covered(console, [s for s in statuses.values() if s.status == "not-covered"],
                       suites)
    _print_planned(console, [s for s in statuses.values() if s.status == "planned"], suites)
    _print_planned(console, [s for s in statuses.values() if s.status == "full-size"], suites,
                   heading="Recorded only by make perf (full sizes)")
    _print_planned(console, [s for s in statuses.values() if s.status in BAD and s.planned], suites,
                   heading="Known shortfalls, failing and planned")
    checked = [s.requirement.id for s in statuses.values()
               if s.requirement.planned and s.status in GOOD]
    if checked:
        console.print(Text(f"Planned but checked, remove the planned line: {', '.join(checked)}",
                           style="yellow"))

    counts = summary(statuses)
    parts = [f"{counts[name]} {_LABELS[name]}" for name in STATUSES if name in counts]
    console.print(Text(f"{len(statuses)} requirements: " + ", ".join(parts), style="bold"))
    if report_path:
        console.print(Text(f"JSON report: {report_path}"))
    failures = [status for status in statuses.values() if status.gate_failed]
    for status in failures:
        req = status.requirement
        worst = _worst(status)
        detail = f" - {worst.detail}" if worst.detail else ""
        console.print(Text(
            f"GATE FAILED {req.id} ({req.title}): measured {req.format_value(status.value)}, "
            f"maximum {req.describe_maximum()}{detail}", style="bold red"))
        console.print(_folded("  by", worst.test, "red"))
    if failures:
        console.print(Text("The run fails: a gated requirement missed its maximum "
                           "(even where its test passed).", style="bold red"))
    gaps = incomplete(statuses) if complete else {}
    if gaps:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, style="bold red")
        grid.add_column(style="red")
        for req_id, why in gaps.items():
            grid.add_row(f"  INCOMPLETE {req_id}", f"{statuses[req_id].status}: {why}")
        console.print(grid)
        console.print(Text(f"The run fails: {len(gaps)} requirement(s) not planned and without "
                           "a passing check at their suite's level (--req-complete). Check "
                           "them, or add planned = \"<what is missing>\" to the catalogue.",
                           style="bold red"))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def _folded(label: str, text: str, style: str) -> Table:
    """``label`` then ``text`` folded beside it: a nodeid has no spaces to wrap at."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold", style=style)
    grid.add_row(Text(label, style=style), text)
    return grid


def _worst(status: Status):
    return next(m for m in status.measurements if m.value == status.value)


_HEADERS = ("ID", "Requirement", "Measured", "Target", "Maximum", "Verdict")


_TESTS_MIN_WIDTH = 60


def _table(covered: list[Status], statuses: Mapping[str, Status], color: bool,
           verbose: bool, width: int) -> tuple[Table, int]:
    """One line per requirement, and the width it needs.

    By default every cell but the title is sized to its content and the title gets
    what is left of ``width`` (cut with an ellipsis); the target leaves out the unit
    the maximum beside it shows. Verbose adds the Tests column and widens as needed."""
    rows = []
    for status in covered:
        req = status.requirement
        target = req.describe_target(unit=verbose)
        if verbose and req.stretch is not None:
            target += f" (stretch {req.format_value(req.stretch)})"
        rows.append([req.id, req.title, _measured_cell(status, statuses, verbose), target,
                     req.describe_maximum(), verdict_label(status, verbose)])
    if not rows:
        rows.append(["-", "no requirement was checked by the tests that ran", "", "", "", ""])
    table = Table(title="musicfs requirements checked in this run", title_justify="left",
                  box=box.SIMPLE_HEAD if color else box.ASCII2, show_edge=False,
                  pad_edge=False)
    widths = [max(len(row[i]) for row in [list(_HEADERS), *rows]) for i in range(6)]
    overhead = 3 * (len(_HEADERS) - 1)  # " | " between columns, no edges
    if verbose:
        widths[1] = min(widths[1], 40)
        needed = sum(widths) + overhead + 3 + _TESTS_MIN_WIDTH
    else:
        widths[1] = max(12, min(widths[1], width - overhead - sum(widths) + widths[1]))
        needed = sum(widths) + overhead
    for i, header in enumerate(_HEADERS):
        if i == 1:
            table.add_column(header, overflow="ellipsis", no_wrap=True, width=widths[1])
        else:
            table.add_column(header, no_wrap=True, min_width=widths[i])
    if verbose:
        table.add_column("Tests", overflow="fold", ratio=1, min_width=_TESTS_MIN_WIDTH)
    for status, row in zip(covered, rows, strict=False):
        cells = [*row[:5], Text(row[5], style=_STYLES[status.status])]
        table.add_row(*cells, *([_tests_cell(status)] if verbose else []))
    if not covered:
        table.add_row(*rows[0], *([""] if verbose else []))
    return table, max(width, needed)


def _measured_cell(status: Status, statuses: Mapping[str, Status], verbose: bool) -> str:
    """Short by default (value and statistic); verbose adds samples and how many values."""
    req = status.requirement
    if req.kind == "composite":
        parts = [statuses[part] for part in req.covers if part in statuses]
        good = sum(part.status in GOOD for part in parts)
        return f"{good}/{len(parts)} parts"
    if status.value is None:
        return ""
    extra = [req.statistic] if req.statistic != "single" else []
    if not verbose:
        return " ".join([req.format_value(status.value), *extra])
    worst = _worst(status)
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
    notes = [part for part in status.note.split("; ") if part == PLANNED_BUT_CHECKED]
    return ", ".join(shown + notes)


def _print_not_covered(console: Console, missing: list[Status], suites: set[str]) -> None:
    if not missing:
        console.print("Every requirement not planned was checked in this run.")
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
        ids = [s.requirement.id + ("*" if s.unit_only else "") for s in listed
               if s.requirement.suite == suite]
        if ids:
            grid.add_row(f"  {suite} ({len(ids)}):", ", ".join(ids))
    console.print(grid)
    if any(s.unit_only for s in listed):
        console.print(Text("  * marked only by unit tests, which cannot prove a requirement "
                           "about a real mount", style=_STYLES["not-covered"]))


def _print_planned(console: Console, planned: list[Status], suites: set[str],
                   heading: str = "Planned, not done yet") -> None:
    """One entry per planned (or full-size) requirement: id, then title and reason beside it."""
    listed = [s for s in planned if not suites or s.requirement.suite in suites]
    if not listed:
        return
    hidden = len(planned) - len(listed)
    heading = f"{heading} ({len(listed)}"
    heading += f"; {hidden} more of other suites, in the JSON report)" if hidden else ")"
    console.print(Text(heading + ":", style="bold"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for status in listed:
        line = Text(status.requirement.title, style="bold")
        reason = status.planned or status.requirement.full_size_only or status.note
        line.append(f": {reason}", style=_STYLES["planned"])
        grid.add_row(f"  {status.requirement.id}", line)
    console.print(grid)
