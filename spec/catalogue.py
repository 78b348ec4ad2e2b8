"""The requirement catalogue: ``spec/requirements.toml`` loaded into typed, validated records.

Every check in the project names the requirements it proves, and CI gates on
their figures, so a typo here (a maximum that is a string, a ``better`` that is
neither ``lower`` nor ``higher``, a duplicated id) would silently weaken a gate.
The loader therefore rejects anything it does not understand, and its errors name
the file, the entry and the field.

Comparisons are inclusive: a value equal to the target meets the target, and a
value equal to the maximum is still within the gate. For ``better = "higher"``
the ``maximum`` is the lowest acceptable value (the gate is on the other side).

``planned`` says, in one line, what is missing for a requirement no check proves
yet. It exists so that the list of what musicfs does not do is written down and
reported, rather than being whatever happens to have no test; the completeness
gate (``--req-complete``) accepts a requirement without a passing check only when
it carries that line.

``full_size_only`` marks a measured requirement whose figure is defined at a size
only ``make perf`` builds (a million tracks, a 1 GiB file): smaller runs judge the
same behaviour at their size without recording a value, and the report says so
(status ``full-size``) instead of counting it as a gap.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

DEFAULT_PATH = Path(__file__).with_name("requirements.toml")

MEASURED_KINDS = frozenset({"timed", "throughput", "scale", "resource", "ratio"})
KINDS = MEASURED_KINDS | {"functional", "composite"}
UNITS = frozenset({"ms", "s", "MB/s", "ops/s", "handles", "files", "entries", "clients",
                   "MB", "KB", "%", "ratio"})
STATISTICS = frozenset({"p50", "p95", "p99", "mean", "peak", "single"})
SUITE_ORDER = ("unit", "conformance", "chaos", "perf")  # also the order reports list them in
SUITES = frozenset(SUITE_ORDER)
# Suites whose requirements only a check against a real mount can prove (see Requirement.real_mount)
REAL_MOUNT_SUITES = frozenset({"conformance", "chaos", "perf"})
DIRECTIONS = frozenset({"lower", "higher"})
ID_PATTERN = re.compile(r"^[A-Z][A-Z0-9]*(?:-[0-9]+(?:\.[0-9]+)*)?$")
TITLE_MAX = 60
# Figures in these units measure the machine as much as the code (times, speeds, memory, and the
# catalogue's "x" ratios, which compare times): a check recording one needs the machine to itself
_ALONE_UNITS = frozenset({"ms", "s", "MB/s", "ops/s", "MB", "KB", "ratio"})
_COUNTED = frozenset({"files", "entries", "handles", "clients", "ops/s"})  # shown as 100K, 1M

Verdict = Literal["pass", "miss-target", "fail"]

_ALWAYS = ("id", "title", "text", "kind", "suite", "gate", "source")
_MEASURED_ONLY = ("unit", "better", "target", "maximum", "statistic", "stretch")
_OPTIONAL = ("values", "covers", "stretch", "planned", "full_size_only")
_KNOWN = frozenset(_ALWAYS + _MEASURED_ONLY + _OPTIONAL)


class CatalogueError(ValueError):
    """The catalogue file is missing, not TOML, or holds an invalid requirement."""


@dataclass(frozen=True)
class Requirement:
    """One requirement of the catalogue; see the field reference at the top of the TOML file."""

    id: str
    title: str
    text: str
    kind: str
    suite: str
    gate: bool
    source: str
    unit: str | None = None
    better: str | None = None
    target: float | None = None
    maximum: float | None = None
    statistic: str | None = None
    stretch: float | None = None
    covers: tuple[str, ...] = ()
    planned: str | None = None
    full_size_only: str | None = None
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}),
                                      compare=False, hash=False)

    @property
    def measured(self) -> bool:
        """True when checks record a value for it (as opposed to pass/fail or composite)."""
        return self.kind in MEASURED_KINDS

    @property
    def needs_machine_alone(self) -> bool:
        """True when its figure moves with whatever else the machine runs: a check recording it
        is marked ``timed`` and runs alone (make test runs the other tests side by side)."""
        return self.measured and self.unit in _ALONE_UNITS

    @property
    def real_mount(self) -> bool:
        """True when only conformance, chaos or perf checks may prove it: a unit test of the
        same code runs against fakes, so it cannot show that a mounted musicfs behaves."""
        return self.suite in REAL_MOUNT_SUITES

    def _no_worse(self, value: float, bound: float) -> bool:
        return value <= bound if self.better == "lower" else value >= bound

    def verdict(self, measured: float) -> Verdict:
        """Judge one measured value: ``pass`` meets the target, ``miss-target`` is within the
        maximum but not the target, ``fail`` is beyond the maximum."""
        if not self.measured:
            raise ValueError(f"{self.id} is {self.kind}; it has no figures to judge a value by")
        value = _number(measured)
        if value is None or math.isnan(value):
            raise ValueError(f"{self.id}: measured value must be a real number, got {measured!r}")
        if self._no_worse(value, self.target):
            return "pass"
        if self._no_worse(value, self.maximum):
            return "miss-target"
        return "fail"

    def worst(self, values: Iterable[float]) -> float:
        """The least favourable of several measurements: the one the gate is judged on."""
        return max(values) if self.better == "lower" else min(values)

    def format_value(self, value: float | None, unit: bool = True) -> str:
        """A value with this requirement's unit, compact enough for a table cell.

        ``unit=False`` leaves out a word unit (ms, MB/s, files) where a neighbouring cell
        already shows it; ``%`` and ``x`` stay, being part of how the number reads."""
        if value is None:
            return ""
        magnitude = abs(value)
        if magnitude >= 1_000_000 and self.unit in _COUNTED:
            text = f"{value / 1_000_000:.3g}M"
        elif magnitude >= 10_000 and self.unit in _COUNTED:
            text = f"{value / 1_000:.3g}K"
        elif magnitude >= 1000:
            text = f"{value:,.0f}"
        else:
            text = f"{value:.3g}"
        if self.unit == "%":
            return f"{text}%"
        if self.unit == "ratio":
            return f"{text}x"
        return f"{text} {self.unit}" if self.unit and unit else text

    def describe_target(self, unit: bool = True) -> str:
        if not self.measured:
            return ""
        return f"{'<' if self.better == 'lower' else '>'} {self.format_value(self.target, unit)}"

    def describe_maximum(self, unit: bool = True) -> str:
        if not self.measured:
            return ""
        bound = self.format_value(self.maximum, unit)
        return f"{'<=' if self.better == 'lower' else '>='} {bound}"


def load_catalogue(path: str | Path | None = None) -> dict[str, Requirement]:
    """Read and validate the catalogue; returns the requirements by id, in file order."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read the requirement catalogue: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from exc
    return parse_catalogue(raw, origin=str(path))


def parse_catalogue(raw: Mapping[str, Any], origin: str = "<catalogue>") -> dict[str, Requirement]:
    """Validate an already parsed catalogue (``{"requirement": [ {...}, ... ]}``)."""
    extra = set(raw) - {"requirement"}
    if extra:
        raise CatalogueError(f"{origin}: unexpected top-level key(s) {sorted(extra)}; "
                             "each requirement is a [[requirement]] table")
    entries = raw.get("requirement")
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(f"{origin}: no [[requirement]] tables found")
    catalogue: dict[str, Requirement] = {}
    for position, entry in enumerate(entries, start=1):
        requirement = _parse_entry(entry, f"{origin}: requirement #{position}")
        if requirement.id in catalogue:
            raise CatalogueError(f"{origin}: requirement #{position}: id {requirement.id!r} "
                                 "is used twice")
        catalogue[requirement.id] = requirement
    _check_covers(catalogue, origin)
    return catalogue


def _parse_entry(entry: Any, where: str) -> Requirement:
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: expected a table, got {type(entry).__name__}")
    if isinstance(entry.get("id"), str):
        where = f"{where} ({entry['id']})"

    def fail(name: str, problem: str) -> CatalogueError:
        return CatalogueError(f"{where}: field {name!r}: {problem}")

    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise fail(unknown[0], f"unknown field (known: {', '.join(sorted(_KNOWN))})")
    for name in _ALWAYS:
        if name not in entry:
            raise fail(name, "missing")
    for name in ("id", "title", "text", "kind", "suite", "source"):
        if not isinstance(entry[name], str) or not entry[name].strip():
            raise fail(name, f"expected a non-empty string, got {entry[name]!r}")
    if not ID_PATTERN.match(entry["id"]):
        raise fail("id", f"{entry['id']!r} does not look like PREFIX-1.2 or G1")
    if len(entry["title"]) > TITLE_MAX:
        raise fail("title", f"longer than {TITLE_MAX} characters; put the detail in 'text'")
    _one_of(entry, "kind", KINDS, fail)
    _one_of(entry, "suite", SUITES, fail)
    if not isinstance(entry["gate"], bool):
        raise fail("gate", f"expected true or false, got {entry['gate']!r}")
    planned = entry.get("planned")
    if planned is not None and (not isinstance(planned, str) or not planned.strip()):
        raise fail("planned", f"expected a non-empty string saying what is missing, "
                   f"got {planned!r}")
    full_size_only = entry.get("full_size_only")
    if full_size_only is not None and (not isinstance(full_size_only, str)
                                       or not full_size_only.strip()):
        raise fail("full_size_only", "expected a non-empty string saying why only a full-size run "
                   f"can record it and what smaller runs judge instead, got {full_size_only!r}")
    if full_size_only is not None and entry["kind"] not in MEASURED_KINDS:
        raise fail("full_size_only", "only measured requirements have a size to be recorded at")

    kind = entry["kind"]
    figures: dict[str, Any] = {}
    if kind in MEASURED_KINDS:
        for name in ("unit", "better", "target", "maximum", "statistic"):
            if name not in entry:
                raise fail(name, f"missing (required for a {kind} requirement)")
        _one_of(entry, "unit", UNITS, fail)
        _one_of(entry, "better", DIRECTIONS, fail)
        _one_of(entry, "statistic", STATISTICS, fail)
        for name in ("target", "maximum", "stretch"):
            if name in entry:
                figures[name] = _number(entry[name])
                if figures[name] is None or not math.isfinite(figures[name]):
                    raise fail(name, f"expected a finite number, got {entry[name]!r}")
        lower = entry["better"] == "lower"
        if (figures["target"] > figures["maximum"]) if lower else (
                figures["target"] < figures["maximum"]):
            raise fail("maximum", f"{figures['maximum']} is stricter than the target "
                       f"{figures['target']} (better = {entry['better']!r})")
        stretch = figures.get("stretch")
        if stretch is not None and ((stretch > figures["target"]) if lower else (
                stretch < figures["target"])):
            raise fail("stretch", f"{stretch} is not beyond the target {figures['target']}")
    else:
        present = [name for name in _MEASURED_ONLY if name in entry]
        if present:
            raise fail(present[0], f"only measured kinds have it, this one is {kind!r}")

    covers: tuple[str, ...] = ()
    if kind == "composite":
        covers_raw = entry.get("covers")
        if (not isinstance(covers_raw, list) or not covers_raw
                or not all(isinstance(item, str) for item in covers_raw)):
            raise fail("covers", "a composite needs a non-empty list of requirement ids")
        covers = tuple(covers_raw)
    elif "covers" in entry:
        raise fail("covers", f"only composite requirements have it, this one is {kind!r}")

    values = entry.get("values", {})
    if not isinstance(values, dict):
        raise fail("values", f"expected a table of named figures, got {values!r}")
    for key, value in values.items():
        if not _plain(value):
            raise fail("values", f"{key!r} must be a number, string, boolean or list of them")

    return Requirement(
        id=entry["id"], title=entry["title"], text=entry["text"], kind=kind,
        suite=entry["suite"], gate=entry["gate"], source=entry["source"],
        unit=entry.get("unit"), better=entry.get("better"), target=figures.get("target"),
        maximum=figures.get("maximum"), statistic=entry.get("statistic"),
        stretch=figures.get("stretch"), covers=covers,
        planned=planned.strip() if planned is not None else None,
        full_size_only=full_size_only.strip() if full_size_only is not None else None,
        values=MappingProxyType(dict(values)),
    )


def _check_covers(catalogue: Mapping[str, Requirement], origin: str) -> None:
    """A composite is judged from its parts, so its parts must exist and not be composite."""
    for requirement in catalogue.values():
        for covered in requirement.covers:
            part = catalogue.get(covered)
            if part is None:
                raise CatalogueError(f"{origin}: {requirement.id}: field 'covers': "
                                     f"unknown requirement {covered!r}")
            if part.kind == "composite":
                raise CatalogueError(f"{origin}: {requirement.id}: field 'covers': {covered!r} "
                                     "is itself composite; list its parts instead")


def _one_of(entry: Mapping[str, Any], name: str, allowed: frozenset[str], fail) -> None:
    if entry[name] not in allowed:
        raise fail(name, f"{entry[name]!r} is not one of {', '.join(sorted(allowed))}")


def _number(value: Any) -> float | None:
    """A real number as float; None for anything else (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain(item) and not isinstance(item, list) for item in value)
    return isinstance(value, (str, int, float, bool))
