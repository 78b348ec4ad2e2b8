"""The peer comparison (``python -m perf.compare``) at CI size, one round, through its Python API.

What can go wrong with such a tool, and is checked here: a row that silently measured
nothing (a zero or missing figure), a musicfs column that read other bytes than the files
hold (or fewer: a short read is a fast read), a peer column shown without the peer
installed or missing with it, and mounts or daemons left behind, after a run and after
one interrupted half way. The figures themselves are judged against issue 18's goals by
the tool, not here: they are shown in the perf table, not asserted.

The library is kept in ``build/perf/compare`` between runs (a few seconds to build at this
size); bindfs and rclone columns appear when the machine has them (``make perf-compare``
installs both).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from perf import compare as tool
from perf.compare import METRICS, CompareOptions, compare, workload


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _processes_naming(text: str) -> list[int]:
    """Processes whose command line names ``text`` (a daemon that left us would still)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def _mounts_under(folder: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(folder))]


def _assert_nothing_left(work: Path, run_dir: Path, before: set[int]) -> None:
    """No mount under ``work``, no child process beyond those alive ``before`` the run (other
    suites' session mounts), no daemon of the run, no run folder."""
    assert not _mounts_under(work), f"mounts left behind: {_mounts_under(work)}"
    left = set(_children(os.getpid())) - before
    assert not left, f"child processes left behind: {sorted(left)}"
    assert not _processes_naming(str(run_dir)), "a daemon of the run is still alive"
    assert not run_dir.exists(), f"{run_dir} was not removed"


@pytest.fixture(scope="module")
def work(perf_dir) -> Path:
    return (perf_dir / "compare").resolve()


def test_peer_comparison_ci(work, tmp_path, results, capsys):
    json_path = tmp_path / "compare.json"
    before = set(_children(os.getpid()))
    result = compare(CompareOptions(size="ci", rounds=1, work=work, json_path=json_path))
    table = result.render()
    with capsys.disabled():
        print("\n" + table)

    # a peer's column is there exactly when the peer is installed
    header_line = next(line for line in table.splitlines() if "metric" in line and "┃" in line)
    columns = [cell.strip() for cell in header_line.split("┃")]
    document = json.loads(json_path.read_text())
    for peer in ("bindfs", "rclone"):
        installed = shutil.which(peer) is not None
        assert (peer in result.peers) == installed, (peer, result.peers)
        assert (peer in result.skipped) == (not installed), result.skipped
        assert document["peers"][peer]["ran"] == installed
        assert (peer in columns) == installed, columns
        assert (f"musicfs/{peer}" in columns) == installed, columns
        assert any(f"{peer}: skipped" in line for line in table.splitlines()) == (not installed)
        for metric in METRICS:
            shown = peer in document["metrics"][metric.key]["figures"]
            assert shown == (installed and peer in metric.peers), (metric.key, peer)

    # every row measured something, for every peer it applies to
    for metric in METRICS:
        for peer in result.peers:
            if peer in metric.peers:
                value = result.median(metric.key, peer)
                assert value is not None and value > 0, f"{metric.key} of {peer}: {value}"
        assert document["metrics"][metric.key]["goal"]["met"] in (True, False, None)
    assert {"native", "musicfs"} <= set(result.peers)

    # musicfs read exactly the files' bytes on every pass; the remounted daemon read them all
    # from its chunk cache (else the "cached" row would time the origin)
    native_bytes = sum((result.library.root / t.relpath).stat().st_size for t in result.library.large)
    assert native_bytes == result.library.large_bytes > 0
    passes = result.bytes_read("musicfs")
    assert set(passes) == {"cold_seq", "warm_seq", "cached_remount", "cold_parallel"}
    assert all(n == native_bytes for n in passes.values()), (passes, native_bytes)
    assert result.digests_match("musicfs") is True
    assert all(result.digests_match(peer) is True for peer in result.peers)
    assert result.remount_fills() == [0]

    _assert_nothing_left(work, result.run_dir, before)
    for metric in METRICS:
        results.add("peers: perf.compare, CI size, 1 round", metric.label,
                    result.median(metric.key, "musicfs"), result.median(metric.key, "native"),
                    unit=metric.unit, fmt=",.4f" if metric.unit == "s" else ",.1f")


def test_interrupted_run_leaves_nothing(work, monkeypatch):
    """Ctrl-C in the middle of a read through musicfs (every other FUSE peer already mounted
    and unmounted once): the run unwinds, unmounting and stopping everything it started."""
    peers = tuple(p for p in ("bindfs", "musicfs") if p == "musicfs" or shutil.which(p))
    real_read = tool.timed_read
    run_dir = work / f"run-{os.getpid()}"  # the tool's folder for this process's run
    musicfs_reads = []

    def interrupted(paths, readers=1, firsts=None):
        if paths[0].is_relative_to(run_dir / "round-1" / "musicfs"):
            musicfs_reads.append(paths[0])
            real_read(paths[:1], readers)  # a fill under way
            raise KeyboardInterrupt
        return real_read(paths, readers, firsts)

    monkeypatch.setattr(workload, "timed_read", interrupted)  # where run_peer_round finds it
    before = set(_children(os.getpid()))
    with pytest.raises(KeyboardInterrupt):
        compare(CompareOptions(size="ci", rounds=1, work=work, json_path=None, peers=peers,
                               verify=False), log=lambda line: None)
    assert musicfs_reads, "the run never read through musicfs"
    _assert_nothing_left(work, run_dir, before)


@pytest.mark.parametrize("argv, message", [(["--peers", "native,nfs"], "unknown nfs"),
                                           (["--peers", ","], "none given"),
                                           (["--rounds", "0"], "at least 1")])
def test_bad_options_are_one_clear_line(argv, message, capsys):
    """A mistyped peer or round count stops before anything is built or mounted, with usage."""
    with pytest.raises(SystemExit) as stopped:
        tool.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
