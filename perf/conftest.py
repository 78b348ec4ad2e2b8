"""What the benchmarks share: large inputs kept between runs, and the comparison table.

Large inputs are expensive to make (a 1M-track index takes a minute or two, the audio
origin a gigabyte and a half), so they live under ``build/perf/`` and are remade only
when the code that makes them changes (the stamp is a hash of that code).

Every benchmark adds rows to one table (metric, musicfs, native, ratio, requirement),
printed with rich at the end of the run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.measure import build_synthetic_index

ROOT = Path(__file__).resolve().parent.parent
PERF_DIR = ROOT / "build" / "perf"

# what the synthetic indexes are made of; a change to any of these rebuilds them
_INDEX_SOURCES = ("fixtures/synthetic.py", "musicfs/index/bulk.py", "musicfs/index/tree.py",
                  "musicfs/index/schema.py", "musicfs/index/library.py",
                  "musicfs/vfs/template.py", "musicfs/vfs/names.py")

# the large audio origin: one long mix (MM-4 wants 1 GiB or more) and a few long tracks
MIX_BYTES = 1 << 30
TRACK_BYTES = 128 << 20
TRACKS = 4
_ORIGIN_VERSION = f"wav-pcm16-noise-v1 {MIX_BYTES} {TRACK_BYTES} {TRACKS}"


def _stamp(paths) -> str:
    digest = hashlib.sha256()
    for rel in paths:
        digest.update(rel.encode())
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def perf_dir() -> Path:
    PERF_DIR.mkdir(parents=True, exist_ok=True)
    return PERF_DIR


@pytest.fixture(scope="session")
def synthetic_index(perf_dir):
    """``synthetic_index(n)``: the path of an n-track synthetic index, built if needed."""
    stamp = _stamp(_INDEX_SOURCES)

    def get(n: int, *, single_album: int | None = None) -> Path:
        name = f"tracks-{n}" + (f"-album-{single_album}" if single_album else "") + ".db"
        return build_synthetic_index(perf_dir / "synthetic" / name, n, seed=31,
                                     single_album=single_album, stamp=stamp)

    return get


@pytest.fixture(scope="session")
def empty_origin(perf_dir) -> Path:
    folder = perf_dir / "empty-origin"
    folder.mkdir(exist_ok=True)
    return folder


def _write_wav(path: Path, size: int, seed: int) -> None:
    """A 16-bit stereo 44.1 kHz WAV of about ``size`` bytes of noise (nothing repeats, so
    the chunk store cannot deduplicate it away)."""
    import numpy as np
    import soundfile

    frames_total = size // 4
    rng = np.random.default_rng(seed)
    block = 1 << 20  # frames per write
    tmp = path.with_name(path.name + ".tmp")
    with soundfile.SoundFile(tmp, "w", samplerate=44100, channels=2, subtype="PCM_16",
                             format="WAV") as out:
        written = 0
        while written < frames_total:
            n = min(block, frames_total - written)
            out.write(rng.integers(-12000, 12000, size=(n, 2), dtype=np.int16))
            written += n
    tmp.rename(path)


@pytest.fixture(scope="session")
def big_origin(perf_dir) -> Path:
    """A local origin of large WAV files (made once, kept in build/perf/)."""
    folder = perf_dir / "big-origin"
    marker = perf_dir / "big-origin.done"
    if marker.exists() and marker.read_text().strip() == _ORIGIN_VERSION:
        return folder
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "Mixes").mkdir(parents=True)
    (folder / "Tracks").mkdir()
    _write_wav(folder / "Mixes" / "long mix.wav", MIX_BYTES, seed=1)
    for i in range(TRACKS):
        _write_wav(folder / "Tracks" / f"long track {i + 1}.wav", TRACK_BYTES, seed=10 + i)
    marker.write_text(_ORIGIN_VERSION + "\n")
    return folder


# -- the comparison table --------------------------------------------------------------
@dataclass
class Row:
    section: str
    metric: str
    musicfs: str
    native: str = ""
    ratio: str = ""
    req: str = ""


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, section: str, metric: str, musicfs: float | str, native: float | str | None = None,
            *, unit: str = "", req: str = "", fmt: str = ",.1f", higher_is_better: bool = True) -> None:
        def show(value) -> str:
            if value is None or value == "":
                return ""
            return value if isinstance(value, str) else f"{value:{fmt}} {unit}".strip()

        ratio = ""
        if isinstance(musicfs, (int, float)) and isinstance(native, (int, float)) and native:
            ratio = f"{musicfs / native:.2f}x"
        self.rows.append(Row(section, metric, show(musicfs), show(native), ratio, req))

    def render(self) -> str:
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(title="musicfs against the same files read natively")
        for name, justify in (("section", "left"), ("metric", "left"), ("musicfs", "right"),
                              ("native", "right"), ("musicfs/native", "right"),
                              ("requirement", "left")):
            table.add_column(name, justify=justify)
        last = None
        for row in self.rows:
            table.add_row(row.section if row.section != last else "", row.metric, row.musicfs,
                          row.native, row.ratio, row.req)
            last = row.section
        out = io.StringIO()
        Console(file=out, width=150, force_terminal=False).print(table)
        return out.getvalue()


_RESULTS = Results()


@pytest.fixture(scope="session")
def results() -> Results:
    return _RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _RESULTS.rows:
        terminalreporter.write_line("")
        terminalreporter.write(_RESULTS.render())
