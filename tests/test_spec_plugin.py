"""The requirement catalogue (spec/requirements.toml) and the pytest plugin that reports on it.

The catalogue carries the figures CI gates on, so these tests pin the design's
figures to it; the plugin decides whether a run passes, so its verdicts are
checked end to end in nested pytest runs (pytester).
"""

from __future__ import annotations

import json
import os
import textwrap
import tomllib

import pytest

from spec.catalogue import (
    DEFAULT_PATH,
    KINDS,
    MEASURED_KINDS,
    STATISTICS,
    SUITES,
    UNITS,
    CatalogueError,
    load_catalogue,
)
from spec.report import CheckResult, Measurement, evaluate

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


# ---------------------------------------------------------------------------------------------
# The catalogue itself
# ---------------------------------------------------------------------------------------------

def test_every_id_is_unique():
    raw = tomllib.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    ids = [entry["id"] for entry in raw["requirement"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert duplicates == []
    assert len(load_catalogue()) == len(ids)


def test_every_field_is_valid(catalogue):
    for req in catalogue.values():
        assert req.kind in KINDS and req.suite in SUITES, req.id
        assert req.title and req.text and req.source, req.id
        if req.kind in MEASURED_KINDS:
            assert req.unit in UNITS and req.statistic in STATISTICS, req.id
            assert req.better in {"lower", "higher"}, req.id
            assert req.verdict(req.target) == "pass", req.id
            assert req.verdict(req.maximum) in {"pass", "miss-target"}, req.id
        else:
            assert (req.unit, req.target, req.maximum, req.better) == (None,) * 4, req.id
        if req.kind == "composite":
            assert req.covers and all(part in catalogue for part in req.covers), req.id


# (id, unit, better, target, maximum, gate) as the brief's catalogue and the seeds give them
BRIEF_FIGURES = [
    ("NFR-1.1", "ms", "lower", 1, 5, True),
    ("NFR-1.2", "ms", "lower", 10, 50, True),
    ("NFR-1.3", "ms", "lower", 5, 20, True),
    ("NFR-1.4", "ms", "lower", 1, 5, True),
    ("NFR-1.5", "ms", "lower", 50, 200, True),
    ("NFR-1.6", "ms", "lower", 200, 1000, True),
    ("NFR-1.7", "ms", "lower", 100, 500, True),
    ("FR-14", "ms", "lower", 500, 1000, True),
    ("NFR-2.1", "MB/s", "higher", 500, 500, True),
    ("NFR-2.2", "MB/s", "higher", 200, 200, True),
    ("NFR-2.3", "ops/s", "higher", 1000, 1000, True),
    ("NFR-2.4", "handles", "higher", 1000, 1000, True),
    ("NFR-3.1", "files", "higher", 1_000_000, 1_000_000, False),
    ("NFR-3.2", "entries", "higher", 100_000, 100_000, False),
    ("NFR-3.5", "files", "higher", 10_000_000, 10_000_000, False),
    ("NFR-3.6", "clients", "higher", 10, 10, True),
    ("NFR-4.1", "MB", "lower", 50, 50, True),
    ("NFR-4.2", "MB", "lower", 200, 200, True),
    ("NFR-4.3", "MB", "lower", 500, 500, True),
    ("NFR-4.4", "KB", "lower", 1, 1, True),
    ("NFR-6.4", "%", "higher", 90, 90, True),
    ("NFR-6.5", "%", "higher", 95, 95, True),
    ("FR-20", "%", "higher", 10, 10, True),
    ("NFR-9.1", "ratio", "lower", 2, 2, True),
    ("PH-3.1", "%", "higher", 50, 50, True),
    ("MM-2", "ms", "lower", 100, 100, False),
    ("MM-3", "ms", "lower", 2000, 2000, True),
    ("MM-4", "MB/s", "higher", 800, 800, True),
    ("MM-5.1", "%", "higher", 95, 95, True),
    ("MM-5.2", "%", "higher", 90, 90, True),
    ("MM-5.3", "%", "higher", 85, 85, True),
]


@pytest.mark.parametrize("req_id, unit, better, target, maximum, gate", BRIEF_FIGURES)
def test_brief_figures_are_exact(catalogue, req_id, unit, better, target, maximum, gate):
    req = catalogue[req_id]
    assert (req.unit, req.better, req.target, req.maximum, req.gate) == (
        unit, better, target, maximum, gate)


def test_named_figures_from_the_design(catalogue):
    assert list(catalogue["NFR-7.3"].values["backoff_ms"]) == [100, 500, 2000]
    assert catalogue["NFR-5.1"].values["default_mb"] == 100
    assert catalogue["NFR-5.2"].values["default_gb"] == 10
    assert catalogue["NFR-3.1"].stretch == 10_000_000
    assert catalogue["NFR-3.6"].stretch == 100
    assert catalogue["FS-1"].values["default_template"] == (
        "$artist/$album ($year) [$format_upper]/$track - $title.$format")
    assert catalogue["CAS-5"].values["prefix"] == "user.musicfs."


def test_catalogue_has_every_brief_requirement(catalogue):
    expected = {
        *(f"NFR-1.{n}" for n in range(1, 8)), "FR-14", *(f"NFR-2.{n}" for n in range(1, 5)),
        "NFR-3.1", "NFR-3.2", "NFR-3.3", "NFR-3.5", "NFR-3.6",
        *(f"NFR-4.{n}" for n in range(1, 5)), "NFR-5.1", "NFR-5.2", "NFR-6.4", "NFR-6.5",
        "FR-20", *(f"NFR-7.{n}" for n in range(1, 5)), *(f"NFR-8.{n}" for n in range(1, 5)),
        "FR-9.2", "NFR-9.1", *(f"G{n}" for n in range(1, 8)), "FR-6", "FR-18.1",
        "PH-3.1", "PH-4.1", "PH-4.2", "PH-4.3",
    }
    assert expected - set(catalogue) == set()
    prefixes = {req_id.split("-")[0] for req_id in catalogue}
    assert {"B2", "MM", "CAS", "ASYNC", "FS"} <= prefixes


def test_verdict_follows_the_direction(catalogue):
    stat, cached_read = catalogue["NFR-1.1"], catalogue["NFR-2.1"]
    assert [stat.verdict(v) for v in (0.5, 1, 3, 5, 5.01)] == [
        "pass", "pass", "miss-target", "miss-target", "fail"]
    assert [cached_read.verdict(v) for v in (900, 500, 499.9)] == ["pass", "pass", "fail"]
    with pytest.raises(ValueError, match="functional"):
        catalogue["FS-4"].verdict(1)


BROKEN_ENTRIES = [
    ('maximum = "five"', "maximum", "finite number"),
    ('better = "up"', "better", "'up' is not one of"),
    ("maximum = 0.5", "maximum", "stricter than the target"),
    ('maxmum = 5', "maxmum", "unknown field"),
    ('unit = "furlongs"', "unit", "not one of"),
    ('gate = "yes"', "gate", "true or false"),
]


@pytest.mark.parametrize("replacement, field_name, message", BROKEN_ENTRIES)
def test_malformed_entry_names_entry_and_field(tmp_path, replacement, field_name, message):
    key = replacement.split("=")[0].strip()
    lines = [line for line in GOOD_ENTRY.splitlines() if not line.startswith(key + " ")]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines + [replacement]) + "\n")
    with pytest.raises(CatalogueError) as error:
        load_catalogue(path)
    text = str(error.value)
    assert "requirement #1 (T-1)" in text and f"field {field_name!r}" in text and message in text


def test_duplicate_ids_and_bad_covers_are_rejected(tmp_path):
    path = tmp_path / "twice.toml"
    path.write_text(GOOD_ENTRY + GOOD_ENTRY)
    with pytest.raises(CatalogueError, match="requirement #2: id 'T-1' is used twice"):
        load_catalogue(path)
    path.write_text(GOOD_ENTRY + textwrap.dedent("""
        [[requirement]]
        id = "C-1"
        title = "t"
        text = "t"
        kind = "composite"
        suite = "unit"
        gate = true
        source = "s"
        covers = ["T-2"]
        """))
    with pytest.raises(CatalogueError, match="C-1: field 'covers': unknown requirement 'T-2'"):
        load_catalogue(path)


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[requirement]\nid = 1\n")
    with pytest.raises(CatalogueError, match="broken.toml: not valid TOML"):
        load_catalogue(path)


def test_evaluate_judges_on_the_worst_value_and_composites_follow_parts(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(SMALL_CATALOGUE)
    small = load_catalogue(path)
    results = [
        CheckResult("t::a", "passed", ("T-1",), (Measurement("T-1", 0.5, "t::a"),)),
        CheckResult("t::b", "passed", (), (Measurement("T-1", 3.0, "t::b"),)),
        CheckResult("t::c", "failed", ("F-1",)),
        CheckResult("t::d", "skipped", ("F-2",)),
    ]
    statuses = evaluate(small, results)
    assert statuses["T-1"].status == "miss-target" and statuses["T-1"].value == 3.0
    assert sorted(statuses["T-1"].tests) == ["t::a", "t::b"]
    assert statuses["F-1"].status == "functional-fail"
    assert statuses["F-2"].status == "skipped"
    assert statuses["C-1"].status == "fail"
    assert statuses["H-1"].status == "not-covered"
    assert not any(status.gate_failed for status in statuses.values())


# ---------------------------------------------------------------------------------------------
# The plugin, in nested pytest runs
# ---------------------------------------------------------------------------------------------

GOOD_ENTRY = textwrap.dedent("""
    [[requirement]]
    id = "T-1"
    title = "a timed thing"
    text = "It is quick."
    kind = "timed"
    unit = "ms"
    better = "lower"
    target = 1
    maximum = 5
    statistic = "p99"
    suite = "conformance"
    gate = true
    source = "test"
    """)

SMALL_CATALOGUE = GOOD_ENTRY + textwrap.dedent("""
    [[requirement]]
    id = "T-2"
    title = "a timed thing, reported only"
    text = "It is quick, ideally."
    kind = "timed"
    unit = "ms"
    better = "lower"
    target = 1
    maximum = 5
    statistic = "p50"
    suite = "perf"
    gate = false
    source = "test"

    [[requirement]]
    id = "H-1"
    title = "a throughput"
    text = "It is fast."
    kind = "throughput"
    unit = "MB/s"
    better = "higher"
    target = 500
    maximum = 200
    statistic = "mean"
    suite = "perf"
    gate = true
    source = "test"

    [[requirement]]
    id = "F-1"
    title = "a behaviour"
    text = "It behaves."
    kind = "functional"
    suite = "conformance"
    gate = true
    source = "test"

    [[requirement]]
    id = "F-2"
    title = "another behaviour"
    text = "It behaves too."
    kind = "functional"
    suite = "chaos"
    gate = true
    source = "test"

    [[requirement]]
    id = "C-1"
    title = "a goal"
    text = "Both hold."
    kind = "composite"
    suite = "conformance"
    gate = true
    source = "test"
    covers = ["F-1", "T-1"]
    """)


def run(pytester: pytest.Pytester, *args: str, catalogue: bool = True):
    """Run pytest in pytester's directory with the small catalogue unless told otherwise."""
    options = ["-p", "no:cacheprovider"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        options += ["-p", "spec.plugin"]
    if catalogue:
        pytester.makefile(".toml", catalogue=SMALL_CATALOGUE)
        options.append("--req-catalogue=catalogue.toml")
    return pytester.runpytest(*options, *args)


def report_of(pytester: pytest.Pytester, path: str = "build/requirements-report.json"):
    document = json.loads((pytester.path / path).read_text())
    return {entry["id"]: entry for entry in document["requirements"]}, document


def test_measured_requirement_within_target_passes(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("T-1")
        def test_quick(record_requirement):
            assert record_requirement("T-1", 0.5, samples=200, detail="warm") == "pass"
        """)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*T-1*a timed thing*0.5 ms (p99, n=200)*< 1 ms*<= 5 ms*pass*"])
    entries, _ = report_of(pytester)
    assert entries["T-1"]["status"] == "pass"
    assert entries["T-1"]["measurements"] == [
        {"value": 0.5, "test": "test_measured_requirement_within_target_passes.py::test_quick",
         "detail": "warm", "samples": 200}]


def test_gated_miss_fails_the_run_although_the_test_passed(pytester):
    pytester.makepyfile("""
        def test_collects_numbers_only(record_requirement):
            record_requirement("T-1", 9.0, detail="cold disk")
        """)
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*T-1*9 ms*FAIL*", "GATE FAILED T-1*9 ms*<= 5 ms*cold disk*"])
    entries, document = report_of(pytester)
    assert document["gate_failures"] == ["T-1"] and document["run_failed_by_gate"]
    assert entries["T-1"]["status"] == "fail"


def test_ungated_miss_is_reported_without_failing(pytester):
    pytester.makepyfile("""
        def test_slow(record_requirement):
            assert record_requirement("T-2", 9.0) == "fail"
        """)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*T-2*FAIL (not gated)*"])


def test_higher_is_better_uses_the_maximum_as_a_floor(pytester):
    pytester.makepyfile("""
        def test_throughput(record_requirement):
            assert record_requirement("H-1", 300) == "miss-target"
            assert record_requirement("H-1", 600) == "pass"
        """)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*H-1*300 MB/s (mean, worst of 2)*> 500 MB/s*>= 200 MB/s*miss*"])


def test_unknown_id_is_a_collection_error(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("T-9")
        def test_something():
            pass
        """)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([("*test_something: @pytest.mark.req: unknown requirement id "
                                  "'T-9' (did you mean *T-1*?); the ids are in catalogue.toml")])


def test_composite_cannot_be_marked_directly(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("C-1")
        def test_goal():
            pass
        """)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*C-1 is a composite of F-1, T-1; mark the test with those*"])


def test_recording_mistakes_fail_the_test(pytester):
    pytester.makepyfile("""
        import pytest
        from spec.plugin import RecordError

        def test_unknown(record_requirement):
            with pytest.raises(RecordError, match="unknown requirement id 'T-7'"):
                record_requirement("T-7", 1.0)

        def test_functional(record_requirement):
            with pytest.raises(RecordError, match="F-1 is functional"):
                record_requirement("F-1", 1.0)

        def test_not_a_number(record_requirement):
            with pytest.raises(RecordError, match="finite number in ms"):
                record_requirement("T-1", float("nan"))
        """)
    result = run(pytester)
    result.assert_outcomes(passed=3)
    assert not (pytester.path / "build").exists()


def test_json_report_holds_every_requirement_including_not_covered(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("F-1")
        def test_behaves():
            pass
        """)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*F-1*functional pass*test_behaves*",
                                 "*C-1*partial*via F-1 (functional-pass), T-1 (not-covered)*",
                                 "Not covered in this run (4):", "*conformance (1):*T-1*",
                                 "*chaos (1):*F-2*", "*perf (2):*T-2, H-1*"])
    entries, document = report_of(pytester)
    assert list(entries) == ["T-1", "T-2", "H-1", "F-1", "F-2", "C-1"]
    assert entries["F-1"]["status"] == "functional-pass"
    assert {entries[i]["status"] for i in ("T-1", "T-2", "H-1", "F-2")} == {"not-covered"}
    assert entries["C-1"]["status"] == "partial"
    assert document["summary"] == {"functional-pass": 1, "partial": 1, "not-covered": 4}


def test_failed_functional_requirement_is_shown_failed(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("F-1")
        def test_behaves():
            assert False, "it misbehaved"

        @pytest.mark.req("F-1", "F-2")
        def test_also_behaves():
            pass
        """)
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*F-1*functional FAIL*test_behaves FAILED*"])
    entries, _ = report_of(pytester)
    assert entries["F-1"]["status"] == "functional-fail"
    assert entries["F-2"]["status"] == "functional-pass"
    assert entries["C-1"]["status"] == "fail"


def test_skipped_only_functional_requirement_is_skipped(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("F-2")
        def test_needs_a_server():
            pytest.skip("no server here")
        """)
    run(pytester).stdout.fnmatch_lines(["*F-2*skipped*test_needs_a_server SKIPPED*"])
    entries, _ = report_of(pytester)
    assert entries["F-2"]["status"] == "skipped"


def test_run_without_requirements_prints_and_writes_nothing(pytester):
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    assert "musicfs requirements" not in result.stdout.str()
    assert not (pytester.path / "build").exists()


def test_module_level_record_and_report_option(pytester):
    pytester.makepyfile("""
        import pytest
        from spec.plugin import record

        @pytest.fixture(scope="module")
        def mounted():
            record("T-1", 2.0, detail="measured while mounting")

        @pytest.mark.req("F-1")
        def test_uses_mount(mounted):
            pass
        """)
    result = run(pytester, "--req-report=out/req.json", "--req-suite=chaos")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*T-1*2 ms*miss target*test_uses_mount*",
                                 "Not covered in this run (1; 2 more of other suites*",
                                 "*chaos (1):*F-2*", "JSON report: out/req.json"])
    entries, _ = report_of(pytester, "out/req.json")
    assert entries["T-1"]["measurements"][0]["detail"] == "measured while mounting"


def test_malformed_catalogue_stops_the_run(pytester):
    pytester.makefile(".toml", broken=GOOD_ENTRY.replace("maximum = 5", 'maximum = "x"'))
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run(pytester, "--req-catalogue=broken.toml", catalogue=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*requirement #1 (T-1): field 'maximum': expected a finite*"])


def test_project_catalogue_is_used_by_default(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.req("NFR-1.1")
        def test_stat(record_requirement, requirement_catalogue):
            assert requirement_catalogue["NFR-1.1"].maximum == 5
            record_requirement("NFR-1.1", 0.8, samples=1000)
        """)
    result = run(pytester, catalogue=False)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*NFR-1.1*stat() of a cached entry*0.8 ms*pass*"])
    entries, document = report_of(pytester)
    assert len(entries) == len(load_catalogue())
    assert document["summary"]["pass"] == 1
