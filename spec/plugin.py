"""pytest plugin shared by every suite: tests declare requirements, record figures, CI gates.

Loaded through the ``pytest11`` entry point, so ``tests/``, ``conformance/``,
``chaos/`` and ``perf/`` all get it without a conftest:

* ``@pytest.mark.req("NFR-1.1", ...)`` says what a test proves. An id that is not
  in the catalogue is a collection error: a misspelt id must not quietly prove
  nothing.
* the ``record_requirement`` fixture (or :func:`record` from anywhere while a test
  runs) records a measured value in the requirement's unit.
* at the end, a table lists every requirement checked with its measured value,
  target, maximum and verdict, and the ones nothing checked; a JSON report holds
  all of it. A gated requirement measured beyond its maximum fails the run even
  when its test passed, because the test may only have been collecting numbers.
* with ``--req-complete`` (``make test``), the run also fails when a requirement
  that is not ``planned`` ends without a passing check at its suite's level, so a
  deleted or skipped test cannot quietly turn a requirement into a gap. Subset
  runs leave the option out and never fail for coverage.

* ``make test`` is two sessions: the tests that may share the machine run side by
  side and ``--req-save`` their checks to a file; the tests marked ``alone`` (their
  figures need the machine to themselves) run after, one at a time, and
  ``--req-merge`` that file to judge the catalogue on both. A session that shares
  the machine refuses a figure of time, speed or memory from a test not marked
  ``alone``: measured beside other tests, it would say nothing about musicfs.

What a test declares and records travels in ``item.user_properties``, so the
verdict is assembled from test reports alone: that works the same in one process
and under pytest-xdist (which ships reports from workers), without importing it.
A run in which no test touches a requirement prints and writes nothing.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .catalogue import SUITES, CatalogueError, Requirement, Verdict, load_catalogue
from .provenance import run_info
from .render import CI_WIDTH, VERBOSE_WIDTH, render
from .report import (
    CheckResult,
    Measurement,
    ResultsError,
    SavedSession,
    Status,
    evaluate,
    incomplete,
    load_results,
    save_results,
    write_json,
)

DEFAULT_REPORT = Path("build") / "requirements-report.json"
# a run without --req-complete (a file, a -k selection) reports here: the default report stays the
# last whole run's, the one to trust, instead of listing most requirements as not covered
PARTIAL_REPORT = Path("build") / "partial-report.json"
# A session that runs tests side by side (an xdist worker, or one saved for --req-merge) refuses
# figures that need the machine alone from a test not marked with this: they would be measured
# beside other tests' load and say nothing about musicfs.
ALONE_MARK = "alone"
_IDS_PROPERTY = "musicfs-req"
_MEASUREMENT_PROPERTY = "musicfs-req-measurement"

# The test running now, for record(); a stack because pytester runs pytest inside pytest.
_running_items: list[pytest.Item] = []
_RUN_KEY: pytest.StashKey[RequirementsRun] = pytest.StashKey()


class RecordError(ValueError):
    """A measurement that cannot be recorded: unknown id, not a measured requirement, bad value."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("musicfs-requirements", "musicfs requirement report")
    group.addoption("--req-report", metavar="PATH", default=None,
                    help=f"where to write the JSON requirement report "
                         f"(default: <rootdir>/{DEFAULT_REPORT.as_posix()} with --req-complete, "
                         f"else <rootdir>/{PARTIAL_REPORT.as_posix()}; written only when "
                         "some test checks a requirement)")
    group.addoption("--req-suite", metavar="NAME", action="append", default=[],
                    help="list as 'not covered' only requirements of this suite "
                         f"({', '.join(sorted(SUITES))}); repeat or separate with commas")
    group.addoption("--req-catalogue", metavar="PATH", default=None,
                    help="requirement catalogue to use (default: spec/requirements.toml)")
    group.addoption("--req-complete", action="store_true", default=False,
                    help="fail the run when a requirement that is not planned ends without a "
                         "passing check at its suite's level (not covered, skipped, no value, "
                         "partial); for full runs such as make test")
    group.addoption("--req-save", metavar="PATH", default=None,
                    help="save what this session's tests declared, recorded and how they ended "
                         "to PATH instead of judging them, for a later session's --req-merge "
                         "(make test: the parallel session before the timed one)")
    group.addoption("--req-merge", metavar="PATH", action="append", default=[],
                    help="judge the catalogue on a saved session's checks as well as this "
                         "session's; a test that failed there fails this run too")
    group.addoption("--req-verbose", action="store_true", default=False,
                    help="show the tests of each requirement and the full measured cell in the "
                         "table (wider than 100 columns)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): the requirement ids this test proves")
    config.addinivalue_line("markers", f"{ALONE_MARK}: needs the machine to itself (it records "
                            "figures of time, speed or memory, or empties kernel caches every mount "
                            "shares); make test runs these one by one after the tests that run "
                            "side by side")
    catalogue_option = config.getoption("req_catalogue")
    catalogue_path = None
    if catalogue_option:
        catalogue_path = Path(config.invocation_params.dir, catalogue_option)
    try:
        catalogue = load_catalogue(catalogue_path)
    except CatalogueError as exc:
        raise pytest.UsageError(f"musicfs requirements: {exc}") from None
    suites = {name.strip() for value in config.getoption("req_suite")
              for name in value.split(",") if name.strip()}
    unknown = suites - SUITES
    if unknown:
        raise pytest.UsageError(f"--req-suite: unknown suite(s) {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(sorted(SUITES))}")
    if config.getoption("req_save") and config.getoption("req_complete"):
        raise pytest.UsageError("--req-save saves a session for a later --req-merge; "
                                "give --req-complete to the session that merges it")
    merged: list[tuple[str, SavedSession]] = []
    if not hasattr(config, "workerinput"):  # xdist workers report to the controller
        for option in config.getoption("req_merge"):
            try:
                merged.append((option, load_results(Path(config.invocation_params.dir, option))))
            except ResultsError as exc:
                raise pytest.UsageError(f"--req-merge: {exc}") from None
    run = RequirementsRun(config, catalogue, suites, merged)
    for option, saved in merged:  # saved by another checkout, or edited: judged by this catalogue
        problems = [f"{result.nodeid}: {problem}" for result in saved.results
                    for problem in run.saved_problems(result)]
        if problems:
            raise pytest.UsageError(f"--req-merge: {option}: " + "; ".join(problems[:5]))
    config.stash[_RUN_KEY] = run
    config.pluginmanager.register(run, "musicfs-requirements-run")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Turn an unknown requirement id into an error on the module that uses it."""
    report = yield
    run = collector.config.stash.get(_RUN_KEY, None)
    if run is None or not report.passed:
        return report
    problems = [problem for node in report.result if isinstance(node, pytest.Item)
                for problem in run.marker_problems(node)]
    if problems:
        report.outcome = "failed"
        report.longrepr = "\n".join(problems)
        report.result = []
    return report


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Attach each test's declared ids to it, checking marks that conftests added late."""
    run = config.stash.get(_RUN_KEY, None)
    if run is None:
        return
    problems = [problem for item in items for problem in run.marker_problems(item)]
    if problems:
        raise pytest.UsageError("\n".join(problems))
    for item in items:
        ids = marked_ids(item)
        if ids:
            item.user_properties.append((_IDS_PROPERTY, list(ids)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _running_items.append(item)
    try:
        return (yield)
    finally:
        _running_items.pop()


@pytest.fixture
def record_requirement(request: pytest.FixtureRequest) -> Callable[..., Verdict]:
    """``record_requirement(req_id, value, *, detail="", samples=None)`` records a measured
    value for a requirement (in its unit) and returns the verdict on it."""
    run = request.config.stash[_RUN_KEY]
    item = request.node

    def record_for_this_test(req_id: str, value: float, *, detail: str = "",
                             samples: int | None = None) -> Verdict:
        return run.record(item, req_id, value, detail=detail, samples=samples)

    return record_for_this_test


@pytest.fixture(scope="session")
def requirement_catalogue(pytestconfig: pytest.Config) -> dict[str, Requirement]:
    """The catalogue this run judges against, to read a figure instead of repeating it."""
    return dict(pytestconfig.stash[_RUN_KEY].catalogue)


def record(req_id: str, value: float, *, detail: str = "",
           samples: int | None = None) -> Verdict:
    """Record a measured value for the test that is running now.

    For code that has no fixture at hand (a session-scoped fixture, a helper deep in a
    benchmark); the value is attributed to whichever test is running.
    """
    if not _running_items:
        raise RecordError(f"record({req_id!r}, ...) needs a running test; call it from a test "
                          "or a fixture, or use the record_requirement fixture")
    item = _running_items[-1]
    run = item.config.stash.get(_RUN_KEY, None)
    if run is None:
        raise RecordError("the musicfs requirements plugin is not active in this pytest run")
    return run.record(item, req_id, value, detail=detail, samples=samples)


def marked_ids(item: pytest.Item) -> tuple[str, ...]:
    """The requirement ids of every ``req`` mark on a test, in order, without repeats."""
    ids: dict[str, None] = {}
    for mark in item.iter_markers("req"):
        for value in mark.args:
            ids[value] = None
    return tuple(ids)


class RequirementsRun:
    """One pytest run's view of the catalogue: what tests declared and recorded, the verdict."""

    def __init__(self, config: pytest.Config, catalogue: dict[str, Requirement],
                 suites: set[str], merged: list[tuple[str, SavedSession]] | None = None):
        self.config = config
        self.merged = list(merged or [])
        self.failed_earlier = [(label, nodeid) for label, saved in self.merged
                               for nodeid in saved.failed]
        self.catalogue = catalogue
        self.suites = suites
        self.statuses: dict[str, Status] | None = None
        self.report_path: Path | None = None
        self.failed_by_gate = False
        self.complete = bool(config.getoption("req_complete"))
        self.failed_incomplete = False
        self.shares_machine = bool(hasattr(config, "workerinput") or config.getoption("req_save"))
        self._phases: dict[str, dict[str, bool]] = {}
        self._properties: dict[str, list[tuple[str, object]]] = {}

    # -- declaring and recording -------------------------------------------------------------
    def marker_problems(self, item: pytest.Item) -> list[str]:
        problems = []
        for mark in item.iter_markers("req"):
            if not mark.args:
                problems.append(f"{item.nodeid}: @pytest.mark.req() needs at least one id")
            for value in mark.args:
                problem = self._id_problem(value)
                if problem:
                    problems.append(f"{item.nodeid}: @pytest.mark.req: {problem}")
        return problems

    def _id_problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"requirement ids are strings, got {value!r}"
        requirement = self.catalogue.get(value)
        if requirement is None:
            close = difflib.get_close_matches(value, self.catalogue, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return (f"unknown requirement id {value!r}{hint}; "
                    f"the ids are in {self.catalogue_label()}")
        if requirement.kind == "composite":
            return (f"{value} is a composite of {', '.join(requirement.covers)}; "
                    "mark the test with those instead")
        return None

    def saved_problems(self, result: CheckResult) -> list[str]:
        """Why a check saved by an earlier session cannot be judged by this catalogue."""
        problems = [problem for req_id in result.requirements
                    if (problem := self._id_problem(req_id))]
        for measurement in result.measurements:
            problem = self._id_problem(measurement.requirement)
            if problem is None and not self.catalogue[measurement.requirement].measured:
                problem = f"{measurement.requirement} is not measured but has a value"
            if problem:
                problems.append(problem)
        return problems

    def record(self, item: pytest.Item, req_id: str, value: float, *, detail: str = "",
               samples: int | None = None) -> Verdict:
        problem = self._id_problem(req_id)
        if problem:
            raise RecordError(problem)
        requirement = self.catalogue[req_id]
        if (requirement.needs_machine_alone and self.shares_machine
                and item.get_closest_marker(ALONE_MARK) is None):
            raise RecordError(f"{req_id} is measured in {requirement.unit}, which needs the "
                              f"machine alone, and this session runs tests side by side: mark "
                              f"{item.nodeid} with @pytest.mark.{ALONE_MARK}")
        if not requirement.measured:
            raise RecordError(f"{req_id} is {requirement.kind}: nothing to record; mark the test "
                              f"with @pytest.mark.req({req_id!r}) and let it pass or fail")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise RecordError(f"{req_id}: the value must be a finite number in "
                              f"{requirement.unit}, got {value!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                    or samples < 1):
            raise RecordError(f"{req_id}: samples must be a positive int, got {samples!r}")
        if not isinstance(detail, str):
            raise RecordError(f"{req_id}: detail must be a string, got {detail!r}")
        item.user_properties.append((_MEASUREMENT_PROPERTY, {
            "requirement": req_id, "value": float(value), "detail": detail, "samples": samples}))
        return requirement.verdict(value)

    # -- collecting outcomes (on the controller when xdist is used) --------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":  # pytest-rerunfailures: only the last attempt counts
            return
        phases = self._phases.setdefault(report.nodeid, {"failed": False, "skipped": False,
                                                         "passed": False})
        if report.failed:
            phases["failed"] = True
        elif report.skipped:
            phases["skipped"] = True  # includes xfail: an expected failure proves nothing
        elif report.when == "call":
            phases["passed"] = True
        # Each phase's report carries every property set so far; the latest is complete.
        self._properties[report.nodeid] = list(report.user_properties)

    def results(self) -> list[CheckResult]:
        results = []
        for nodeid, properties in self._properties.items():
            ids = [value for name, value in properties if name == _IDS_PROPERTY]
            declared = tuple(req_id for group in ids for req_id in group)
            measurements = tuple(
                Measurement(value["requirement"], value["value"], nodeid, value["detail"],
                            value["samples"])
                for name, value in properties if name == _MEASUREMENT_PROPERTY)
            if not declared and not measurements:
                continue
            phases = self._phases[nodeid]
            outcome = ("failed" if phases["failed"] else "skipped" if phases["skipped"]
                       else "passed" if phases["passed"] else "skipped")
            results.append(CheckResult(nodeid, outcome, declared, measurements))
        return results

    def merged_results(self) -> list[CheckResult]:
        """This session's checks after every merged session's (a test run twice counts twice)."""
        return [result for _, saved in self.merged for result in saved.results] + self.results()

    # -- the verdict -------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):  # an xdist worker: the controller reports
            return
        save = self.config.getoption("req_save")
        if save:
            failed = [nodeid for nodeid, phases in self._phases.items() if phases["failed"]]
            save_results(Path(self.config.invocation_params.dir, save), self.results(),
                         failed=failed, tests=len(self._phases))
            return
        if self.failed_earlier and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        results = self.merged_results()
        explicit = self.config.getoption("req_report")
        if not results and not explicit and not self.complete:
            return
        self.statuses = evaluate(self.catalogue, results)
        gate_failures = [s for s in self.statuses.values() if s.gate_failed]
        if gate_failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self.failed_by_gate = True
        gaps = incomplete(self.statuses) if self.complete else {}
        if gaps and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self.failed_incomplete = True
        if explicit:
            self.report_path = Path(self.config.invocation_params.dir, explicit)
        else:
            self.report_path = self.config.rootpath / (DEFAULT_REPORT if self.complete else PARTIAL_REPORT)
        write_json(self.report_path, self.statuses, catalogue_path=self.catalogue_label(),
                   run_failed_by_gate=bool(gate_failures), run=run_info(self.config.rootpath),
                   complete_gate=self.complete, run_failed_incomplete=bool(gaps))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        save = self.config.getoption("req_save")
        if save and not hasattr(self.config, "workerinput"):
            terminalreporter.write_line(f"musicfs requirements: {len(self.results())} checks of "
                                        f"{len(self._phases)} tests saved to {save} for --req-merge")
        for label, saved in self.merged:
            terminalreporter.write_line(f"musicfs requirements: merged {len(saved.results)} checks "
                                        f"of {saved.tests} tests from {label}")
        if self.failed_earlier:
            terminalreporter.section("failed in a merged session")
            for label, nodeid in self.failed_earlier:
                terminalreporter.write_line(f"FAILED {nodeid} ({label})")
        if self.statuses is None:
            return
        writer = self.config.get_terminal_writer()
        isatty = terminalreporter.isatty  # a method in pytest 9, a plain bool before
        verbose = bool(self.config.getoption("req_verbose"))
        width = writer.fullwidth if (isatty() if callable(isatty) else isatty) else (
            VERBOSE_WIDTH if verbose else CI_WIDTH)
        terminalreporter.section("musicfs requirements")
        terminalreporter.write(render(self.statuses, color=writer.hasmarkup, width=width,
                                      suites=self.suites, report_path=self._shown(
                                          self.report_path),
                                      complete=self.complete, verbose=verbose))

    def catalogue_label(self) -> str:
        option = self.config.getoption("req_catalogue")
        if option:
            return self._shown(Path(self.config.invocation_params.dir, option))
        return "spec/requirements.toml"

    def _shown(self, path: Path | None) -> str | None:
        """A path relative to the rootdir when it lies inside it (logs must not leak hosts)."""
        if path is None:
            return None
        try:
            return Path(os.path.relpath(path, self.config.rootpath)).as_posix()
        except ValueError:  # another drive on Windows
            return str(path)

