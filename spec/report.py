"""Judging a test run against the catalogue, and the JSON form of the result.

This module knows nothing about pytest: the plugin feeds it what each test
declared, recorded and how it ended, and gets back one :class:`Status` per
requirement. Keeping the rules here makes them testable on their own and
readable in one place:

* measured requirements are judged on their worst recorded value
  (``pass`` / ``miss-target`` / ``fail``); a gated ``fail`` fails the run;
* functional requirements pass when every test marked with them passed;
* a check counts at its level (its nodeid's top directory): a requirement of the
  conformance, chaos or perf suite is about a real mount, so only checks from
  those directories count; unit tests marked with it are listed but leave it
  ``not-covered`` ("only unit tests"). A skipped check is never a pass;
* a measured requirement with a ``full_size_only`` line that ends a run without a
  value (a CI-sized run judged it without recording) is ``full-size``, its reason shown;
* a measured requirement with a value but a failed check is ``fail``: the value
  alone does not make it hold;
* a requirement with a ``planned`` line and no passing check is ``planned``, its
  reason shown; one that passes anyway says the line should go;
* composite requirements follow their parts; one whose missing parts are all
  planned is planned;
* anything no test touched is ``not-covered``, never left out, and
  :func:`incomplete` names what the completeness gate (``--req-complete``) fails on.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalogue import Requirement

# Every status a requirement can end a run with, in the order summaries list them.
STATUSES = ("pass", "miss-target", "fail", "functional-pass", "functional-fail", "partial",
            "unmeasured", "skipped", "full-size", "planned", "not-covered")
GOOD = frozenset({"pass", "miss-target", "functional-pass"})
BAD = frozenset({"fail", "functional-fail"})
# What the completeness gate fails on (a planned requirement never ends in one of these).
INCOMPLETE = frozenset({"not-covered", "skipped", "unmeasured", "partial"})
FORMAT = "musicfs-requirements-report/2"

# A check's level is its nodeid's top directory; anything else (a pytester run) is unit.
LEVELS = {"tests": "unit", "conformance": "conformance", "chaos": "chaos", "perf": "perf"}
PLANNED_BUT_CHECKED = "planned but checked: remove the planned line"


def level_of(nodeid: str) -> str:
    """``unit``, ``conformance``, ``chaos`` or ``perf`` from where the test lives."""
    top, slash, _ = nodeid.partition("/")
    return LEVELS.get(top, "unit") if slash else "unit"


def _short(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class Measurement:
    """One value a test recorded for a measured requirement, in the requirement's unit."""

    requirement: str
    value: float
    test: str
    detail: str = ""
    samples: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "test": self.test, "detail": self.detail,
                "samples": self.samples, "level": level_of(self.test)}


@dataclass
class CheckResult:
    """How one test ended (``passed`` / ``failed`` / ``skipped``) and what it declared."""

    nodeid: str
    outcome: str
    requirements: tuple[str, ...] = ()
    measurements: tuple[Measurement, ...] = ()

    @property
    def level(self) -> str:
        return level_of(self.nodeid)


@dataclass
class Status:
    """The verdict on one requirement for this run.

    ``tests`` holds every test that marked or recorded it, at any level;
    ``measurements`` only the values that counted (the ones ``value`` is the worst of).
    ``planned`` is the reason shown for a ``planned`` status (the catalogue's line, or
    for a composite the parts that are planned).
    """

    requirement: Requirement
    status: str
    value: float | None = None
    measurements: list[Measurement] = field(default_factory=list)
    tests: dict[str, str] = field(default_factory=dict)
    note: str = ""
    planned: str | None = None

    @property
    def gate_failed(self) -> bool:
        """A gated measured requirement whose worst value is beyond its maximum."""
        return (self.requirement.gate and self.status == "fail" and self.value is not None
                and self.requirement.verdict(self.value) == "fail")

    @property
    def covered(self) -> bool:
        """Shown as a row of the table: some check counted, for good or bad."""
        return self.status not in {"not-covered", "planned", "full-size"}

    @property
    def unit_only(self) -> bool:
        """Not covered although unit tests marked it: a real-mount requirement needs more."""
        return self.status in {"not-covered", "planned"} and bool(self.tests) and all(
            level_of(nodeid) == "unit" for nodeid in self.tests)

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    def as_json(self) -> dict[str, Any]:
        req = self.requirement
        return {
            "id": req.id, "title": req.title, "text": req.text, "kind": req.kind,
            "suite": req.suite, "gate": req.gate, "source": req.source,
            "unit": req.unit, "better": req.better, "target": req.target,
            "maximum": req.maximum, "statistic": req.statistic, "stretch": req.stretch,
            "covers": list(req.covers), "planned": self.planned or req.planned,
            "status": self.status, "gate_failed": self.gate_failed, "measured": self.value,
            "measurements": [m.as_json() for m in self.measurements],
            "tests": [{"nodeid": nodeid, "outcome": outcome, "level": level_of(nodeid)}
                      for nodeid, outcome in self.tests.items()],
            "note": self.note,
        }


def evaluate(catalogue: Mapping[str, Requirement],
             results: Iterable[CheckResult]) -> dict[str, Status]:
    """One :class:`Status` per catalogue entry, in catalogue order."""
    tests: dict[str, dict[str, str]] = {req_id: {} for req_id in catalogue}
    measurements: dict[str, list[Measurement]] = {req_id: [] for req_id in catalogue}
    for result in results:
        for req_id in result.requirements:
            tests[req_id][result.nodeid] = result.outcome
        for measurement in result.measurements:
            tests[measurement.requirement][result.nodeid] = result.outcome
            measurements[measurement.requirement].append(measurement)

    statuses: dict[str, Status] = {}
    for req_id, req in catalogue.items():
        if req.kind != "composite":
            statuses[req_id] = _apply_plan(_apply_full_size(
                _judge(req, tests[req_id], measurements[req_id])))
    for req_id, req in catalogue.items():
        if req.kind == "composite":
            parts = [statuses[part] for part in req.covers]
            statuses[req_id] = _apply_plan(_judge_composite(req, parts))
    return {req_id: statuses[req_id] for req_id in catalogue}


def _judge(req: Requirement, tests: dict[str, str], values: list[Measurement]) -> Status:
    """Judge on the checks at the requirement's level; list every test regardless."""
    counted_tests, counted_values = tests, values
    if req.real_mount:
        counted_tests = {n: o for n, o in tests.items() if level_of(n) != "unit"}
        counted_values = [m for m in values if level_of(m.test) != "unit"]
    if req.measured:
        status = _judge_measured(req, counted_values, counted_tests)
    else:
        status = _judge_functional(req, counted_tests)
    status.tests = dict(tests)
    ignored = [nodeid for nodeid in tests if nodeid not in counted_tests]
    if ignored and not counted_tests:
        names = ", ".join(_short(n) + ("" if tests[n] == "passed" else f" ({tests[n]})")
                          for n in ignored)
        status.add_note(f"only unit tests: {names}; a {req.suite} check must prove it")
    return status


def _judge_measured(req: Requirement, values: list[Measurement], tests: dict[str, str]) -> Status:
    failed = [nodeid for nodeid, outcome in tests.items() if outcome == "failed"]
    if values:
        worst = req.worst(m.value for m in values)
        if failed:  # the value may be fine; what the failing check asserted beside it is not
            return Status(req, "fail", worst, values, tests,
                          f"{len(failed)} of its tests failed: " + ", ".join(map(_short, failed)))
        return Status(req, req.verdict(worst), worst, values, tests)
    if failed:
        return Status(req, "fail", None, [], tests, "no value recorded; a test failed")
    if any(outcome == "passed" for outcome in tests.values()):
        return Status(req, "unmeasured", None, [], tests, "tests passed without recording a value")
    if tests:
        return Status(req, "skipped", None, [], tests, "every check of it was skipped")
    return Status(req, "not-covered")


def _judge_functional(req: Requirement, tests: dict[str, str]) -> Status:
    outcomes = set(tests.values())
    if "failed" in outcomes:
        return Status(req, "functional-fail", tests=tests)
    if "passed" in outcomes:
        return Status(req, "functional-pass", tests=tests)
    if tests:
        return Status(req, "skipped", tests=tests, note="every check of it was skipped")
    return Status(req, "not-covered")


def _apply_full_size(status: Status) -> Status:
    """A figure only ``make perf`` records, in a run that recorded none: ``full-size``.

    Its checks may still have run at this run's size (and a failed one stays a failure).
    """
    if status.requirement.full_size_only and status.status in {"not-covered", "unmeasured"}:
        status.status = "full-size"
        status.add_note(status.requirement.full_size_only)
    return status


def _apply_plan(status: Status) -> Status:
    """A planned requirement without a passing check is ``planned``; with one, it says so.

    A failure stays a failure: a check that runs and fails is news, planned or not.
    """
    reason = status.requirement.planned
    if not reason:
        return status
    if status.status in GOOD:
        status.add_note(PLANNED_BUT_CHECKED)
    elif status.status in BAD:  # a known shortfall: still a failure, and its reason is shown
        status.planned = reason
    else:
        status.status = "planned"
        status.planned = reason
    return status


def _judge_composite(req: Requirement, parts: list[Status]) -> Status:
    """Holds when every part holds; the note counts them ("38/40 hold") and names the rest.

    A composite of a few parts lists each with its status; a long one (the
    fault catalogue) would drown the report, so it names only the parts that
    do not hold. When every part that does not hold is planned, the composite is
    planned too (its reason names them): the gap is already written down part by part.
    When the others hold and the rest are figures only ``make perf`` records
    (``full-size``), so is the composite: a CI-sized run cannot show them.
    """
    judged = [part for part in parts if part.status in GOOD | BAD]
    good = [part for part in judged if part.status in GOOD]
    planned = [part for part in parts if part.status == "planned"]
    full_size = [part for part in parts if part.status == "full-size"]
    if len(parts) <= 6:
        names = "via " + ", ".join(f"{p.requirement.id} ({p.status})" for p in parts)
    else:
        others = [p for p in parts if p.status not in GOOD]
        names = f"{len(good)}/{len(parts)} hold" + (
            "; not: " + ", ".join(f"{p.requirement.id} ({p.status})" for p in others) if others else "")
    if any(part.status in BAD for part in judged):
        return Status(req, "fail", note=names)
    if len(judged) + len(planned) + len(full_size) < len(parts):
        if not judged:
            note = f"made of {', '.join(req.covers)}" if len(parts) <= 6 else names
            return Status(req, "not-covered", note=note)
        return Status(req, "partial", note=names)
    if planned:
        reason = "parts planned: " + ", ".join(p.requirement.id for p in planned)
        return Status(req, "planned", note=names, planned=reason)
    if full_size:  # the rest holds; those figures are make perf's (their checks ran at CI size)
        return Status(req, "full-size", note=f"{names}; recorded only by make perf: "
                      + ", ".join(p.requirement.id for p in full_size))
    return Status(req, "pass", note=names)


def incomplete(statuses: Mapping[str, Status]) -> dict[str, str]:
    """What ``--req-complete`` fails on: id -> why, for every requirement without a passing
    check at its suite's level and without a ``planned`` line."""
    why = {"not-covered": "no check ran", "skipped": "every check of it was skipped",
           "unmeasured": "its checks recorded no value", "partial": "some parts not checked"}
    return {req_id: status.note or why[status.status]
            for req_id, status in statuses.items() if status.status in INCOMPLETE}


def summary(statuses: Mapping[str, Status]) -> dict[str, int]:
    counts = Counter(status.status for status in statuses.values())
    return {name: counts[name] for name in STATUSES if counts[name]}


def write_json(path: Path, statuses: Mapping[str, Status], *, catalogue_path: str,
               run_failed_by_gate: bool, run: Mapping[str, Any] | None = None,
               complete_gate: bool = False, run_failed_incomplete: bool = False) -> None:
    """Write the whole verdict, every requirement included, for CI artefacts and tools.

    ``run`` (commit and machine, from :mod:`spec.provenance`) is written at the top and
    repeated in every requirement, so a requirement copied out of the report on its
    own still says where it was measured.
    """
    run = dict(run or {"commit": None, "machine": None})
    gaps = incomplete(statuses)
    requirements = []
    for status in statuses.values():
        entry = status.as_json()
        entry["commit"], entry["machine"] = run.get("commit"), run.get("machine")
        requirements.append(entry)
    document = {
        "format": FORMAT,
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "catalogue": catalogue_path,
        "run": {**run, "complete_gate": complete_gate},
        "summary": summary(statuses),
        "gate_failures": [s.requirement.id for s in statuses.values() if s.gate_failed],
        "run_failed_by_gate": run_failed_by_gate,
        "incomplete": gaps,
        "run_failed_incomplete": run_failed_incomplete,
        "planned": {req_id: s.planned for req_id, s in statuses.items() if s.status == "planned"},
        "requirements": requirements,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


# -- one run in several pytest sessions ----------------------------------------------------------
# make test runs the tests that may share the machine in parallel (pytest-xdist) and the timed ones
# alone afterwards; the first session saves what its tests declared, recorded and how they ended,
# and the second judges the catalogue on both (--req-save / --req-merge).
RESULTS_FORMAT = "musicfs-requirements-results/1"


class ResultsError(ValueError):
    """A saved session that cannot be merged: missing, unreadable or of another format."""


@dataclass(frozen=True)
class SavedSession:
    """What one earlier session of the run left: its checks and the tests that failed in it."""

    results: tuple[CheckResult, ...]
    failed: tuple[str, ...]
    tests: int


def save_results(path: Path, results: Iterable[CheckResult], *, failed: Iterable[str],
                 tests: int) -> None:
    """Write a session's checks for a later session's ``--req-merge`` (atomically)."""
    document = {
        "format": RESULTS_FORMAT,
        "tests": tests,
        "failed": sorted(failed),
        "results": [{"nodeid": r.nodeid, "outcome": r.outcome, "requirements": list(r.requirements),
                     "measurements": [{"requirement": m.requirement, "value": m.value,
                                       "detail": m.detail, "samples": m.samples}
                                      for m in r.measurements]}
                    for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    temporary.replace(path)


def load_results(path: Path) -> SavedSession:
    """Read what :func:`save_results` wrote; anything else is a :class:`ResultsError`."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no saved session (did the session with --req-save run?)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{path}: not a saved session ({RESULTS_FORMAT})")
    try:
        results = tuple(
            CheckResult(entry["nodeid"], entry["outcome"], tuple(entry["requirements"]),
                        tuple(Measurement(m["requirement"], float(m["value"]), entry["nodeid"],
                                          m["detail"], m["samples"])
                              for m in entry["measurements"]))
            for entry in document["results"])
        saved = SavedSession(results, tuple(document["failed"]), int(document["tests"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{path}: a saved check is malformed: {exc!r}") from None
    for result in saved.results:
        if result.outcome not in {"passed", "failed", "skipped"}:
            raise ResultsError(f"{path}: {result.nodeid}: unknown outcome {result.outcome!r}")
        if not all(isinstance(req_id, str) for req_id in result.requirements) or not all(
                isinstance(m.requirement, str) and isinstance(m.detail, str)
                and (m.samples is None or (isinstance(m.samples, int) and m.samples > 0))
                and math.isfinite(m.value) for m in result.measurements):
            raise ResultsError(f"{path}: {result.nodeid}: a requirement id, value, detail or "
                               "sample count of the wrong type")
    if not all(isinstance(nodeid, str) for nodeid in saved.failed):
        raise ResultsError(f"{path}: 'failed' must list test ids")
    return saved
