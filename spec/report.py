"""Judging a test run against the catalogue, and the JSON form of the result.

This module knows nothing about pytest: the plugin feeds it what each test
declared, recorded and how it ended, and gets back one :class:`Status` per
requirement. Keeping the rules here makes them testable on their own and
readable in one place:

* measured requirements are judged on their worst recorded value
  (``pass`` / ``miss-target`` / ``fail``); a gated ``fail`` fails the run;
* functional requirements pass when every test marked with them passed;
* composite requirements follow their parts;
* anything no test touched is ``not-covered``, never left out.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalogue import Requirement

# Every status a requirement can end a run with, in the order summaries list them.
STATUSES = ("pass", "miss-target", "fail", "functional-pass", "functional-fail", "partial",
            "unmeasured", "skipped", "not-covered")
GOOD = frozenset({"pass", "miss-target", "functional-pass"})
BAD = frozenset({"fail", "functional-fail"})


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
                "samples": self.samples}


@dataclass
class CheckResult:
    """How one test ended (``passed`` / ``failed`` / ``skipped``) and what it declared."""

    nodeid: str
    outcome: str
    requirements: tuple[str, ...] = ()
    measurements: tuple[Measurement, ...] = ()


@dataclass
class Status:
    """The verdict on one requirement for this run."""

    requirement: Requirement
    status: str
    value: float | None = None
    measurements: list[Measurement] = field(default_factory=list)
    tests: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def gate_failed(self) -> bool:
        """A gated measured requirement whose worst value is beyond its maximum."""
        return self.requirement.gate and self.status == "fail" and self.value is not None

    @property
    def covered(self) -> bool:
        return self.status != "not-covered"

    def as_json(self) -> dict[str, Any]:
        req = self.requirement
        return {
            "id": req.id, "title": req.title, "text": req.text, "kind": req.kind,
            "suite": req.suite, "gate": req.gate, "source": req.source,
            "unit": req.unit, "better": req.better, "target": req.target,
            "maximum": req.maximum, "statistic": req.statistic, "stretch": req.stretch,
            "covers": list(req.covers),
            "status": self.status, "gate_failed": self.gate_failed, "measured": self.value,
            "measurements": [m.as_json() for m in self.measurements],
            "tests": [{"nodeid": nodeid, "outcome": outcome}
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
        if req.kind == "composite":
            continue
        if req.measured:
            statuses[req_id] = _judge_measured(req, measurements[req_id], tests[req_id])
        else:
            statuses[req_id] = _judge_functional(req, tests[req_id])
    for req_id, req in catalogue.items():
        if req.kind == "composite":
            statuses[req_id] = _judge_composite(req, [statuses[part] for part in req.covers])
    return {req_id: statuses[req_id] for req_id in catalogue}


def _judge_measured(req: Requirement, values: list[Measurement], tests: dict[str, str]) -> Status:
    failed = [nodeid for nodeid, outcome in tests.items() if outcome == "failed"]
    if values:
        worst = req.worst(m.value for m in values)
        note = f"{len(failed)} of its tests failed" if failed else ""
        return Status(req, req.verdict(worst), worst, values, tests, note)
    if failed:
        return Status(req, "fail", None, [], tests, "no value recorded; a test failed")
    if any(outcome == "passed" for outcome in tests.values()):
        return Status(req, "unmeasured", None, [], tests, "tests passed without recording a value")
    if tests:
        return Status(req, "skipped", None, [], tests)
    return Status(req, "not-covered")


def _judge_functional(req: Requirement, tests: dict[str, str]) -> Status:
    outcomes = set(tests.values())
    if "failed" in outcomes:
        return Status(req, "functional-fail", tests=tests)
    if "passed" in outcomes:
        return Status(req, "functional-pass", tests=tests)
    if tests:
        return Status(req, "skipped", tests=tests)
    return Status(req, "not-covered")


def _judge_composite(req: Requirement, parts: list[Status]) -> Status:
    """Holds when every part holds; the note counts them ("38/40 hold") and names the rest.

    A composite of a few parts lists each with its status; a long one (the
    fault catalogue) would drown the report, so it names only the parts that
    do not hold.
    """
    judged = [part for part in parts if part.status in GOOD | BAD]
    good = [part for part in judged if part.status in GOOD]
    if len(parts) <= 6:
        names = "via " + ", ".join(f"{p.requirement.id} ({p.status})" for p in parts)
    else:
        others = [p for p in parts if p.status not in GOOD]
        names = f"{len(good)}/{len(parts)} hold" + (
            "; not: " + ", ".join(f"{p.requirement.id} ({p.status})" for p in others) if others else "")
    if any(part.status in BAD for part in judged):
        return Status(req, "fail", note=names)
    if not judged:
        return Status(req, "not-covered", note=f"made of {', '.join(req.covers)}" if len(parts) <= 6 else names)
    if len(judged) < len(parts):
        return Status(req, "partial", note=names)
    return Status(req, "pass", note=names)


def summary(statuses: Mapping[str, Status]) -> dict[str, int]:
    counts = Counter(status.status for status in statuses.values())
    return {name: counts[name] for name in STATUSES if counts[name]}


def write_json(path: Path, statuses: Mapping[str, Status], *, catalogue_path: str,
               run_failed_by_gate: bool) -> None:
    """Write the whole verdict, every requirement included, for CI artefacts and tools."""
    document = {
        "format": "musicfs-requirements-report/1",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "catalogue": catalogue_path,
        "summary": summary(statuses),
        "gate_failures": [s.requirement.id for s in statuses.values() if s.gate_failed],
        "run_failed_by_gate": run_failed_by_gate,
        "requirements": [status.as_json() for status in statuses.values()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
