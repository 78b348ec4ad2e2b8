"""The commands that ask a running daemon start fast and stay light (CLI-1).

``musicfs status``, ``cache stats``, ``search`` and the like are typed by hand
and run by scripts and status bars, over and over: each is a process of its
own, so its whole life counts, from exec to exit, with its table printed. Each
runs here as a user runs it, against a real mount, many times, the commands
interleaved so that noise on a shared machine lands on all of them alike; the
median of all runs is the figure.

What keeps them fast is what they do not load: the daemon's own machinery
(trio, pyfuse3) and a general HTTP client (httpx, which brings trio in). A
command's process is asked, after it ran, which modules it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.measure import DAEMON_ENV, median
from fixtures.bigfile import write_wav
from musicfs import daemon
from tests.harness import mount_library, musicfs_cmd

ROUNDS = 15  # timed runs of each command (after one untimed round)
HEAVY = ("trio", "pyfuse3", "httpx")  # what a command that only asks a daemon must never import
TRACKS = 3


def commands(mountpoint: str) -> dict[str, tuple[list[str], Callable[[str], bool]]]:
    """name -> (arguments, what its human output must show)."""
    return {
        "status": (["status"], lambda out: mountpoint in out and "ready" in out and f"{TRACKS} in" in out),
        "cache stats": (["cache", "stats"], lambda out: "hit rate" in out and "10.0 GB" in out),
        "origin list": (["origin", "list"], lambda out: "local" in out and "healthy" in out),
        "search": (["search", "take"], lambda out: f"{TRACKS} of {TRACKS} matches" in out
                   and "take1.wav" in out),
        "pin list": (["pin", "list"], lambda out: "0 pinned" in out),
        "collection list": (["collection", "list"], lambda out: "no collections" in out),
    }


@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli-startup")
    lib = work / "lib"
    lib.mkdir()
    for i in range(TRACKS):
        write_wav(lib / f"take{i}.wav", 64 * 1024, seed=i)
    with mount_library(origin=lib, work=work / "work") as mount:
        yield mount


def run(state: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """One command, timed from before its exec to after its exit, in ms.

    It runs the way an installed musicfs does, with its bytecode cached: a
    ``PYTHONDONTWRITEBYTECODE`` in the test environment is not passed on (otherwise
    every run would compile musicfs' modules again and time the compiler).
    """
    started = time.perf_counter()
    result = subprocess.run(musicfs_cmd("--state-dir", str(state), *args), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, env=DAEMON_ENV)
    return (time.perf_counter() - started) * 1000, result


# runs a command the way musicfs' entry point does, then says which packages the process imported
PROBE = """
import json, sys
from musicfs.cli.main import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "packages": sorted({name.partition(".")[0] for name in sys.modules})}))
"""


@pytest.mark.req("CLI-1")
def test_commands_that_ask_a_daemon_import_neither_trio_nor_pyfuse3_nor_httpx(mounted):
    mnt = str(daemon.canonical(mounted.mountpoint))
    for name, (args, shows) in commands(mnt).items():
        for form in (args, [*args, "--json"]):
            result = subprocess.run([sys.executable, "-c", PROBE, "--state-dir", str(mounted.state_dir), *form],
                                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            *printed, last = result.stdout.splitlines() or [""]
            assert result.returncode == 0 and last.startswith("{"), (form, result.stdout, result.stderr)
            report = json.loads(last)
            assert report["code"] == 0, (form, report)
            assert not set(HEAVY) & set(report["packages"]), (form, set(HEAVY) & set(report["packages"]))
            output = "\n".join(printed)
            if form == args:
                assert shows(output), (name, output)
            else:
                json.loads(output)  # the API's document, as it is


@pytest.mark.req("CLI-1")
@pytest.mark.alone
def test_commands_that_ask_a_daemon_start_fast(mounted, record_requirement, requirement_catalogue, capsys):
    state, mnt = mounted.state_dir, str(daemon.canonical(mounted.mountpoint))
    table = commands(mnt)
    times: dict[str, list[float]] = {name: [] for name in table}
    for round_no in range(1 + ROUNDS):  # the first round is not timed: bytecode cached, the API loaded
        for name, (args, shows) in table.items():
            ms, result = run(state, args)
            assert result.returncode == 0 and not result.stderr, (name, result.stderr)
            assert shows(result.stdout), (name, result.stdout)
            if round_no:
                times[name].append(ms)
    everything = [ms for runs in times.values() for ms in runs]
    overall = median(everything)
    each = {name: median(runs) for name, runs in times.items()}
    summary = ", ".join(f"{name} {ms:.0f}" for name, ms in each.items())
    with capsys.disabled():
        print(f"\nCLI-1 median of {len(everything)} runs: {overall:.1f} ms ({summary} ms)")
    record_requirement("CLI-1", overall, samples=len(everything),
                       detail=f"median wall time from exec to exit; per command: {summary} ms")
    maximum = requirement_catalogue["CLI-1"].maximum
    assert overall <= maximum
    slow = {name: ms for name, ms in each.items() if ms > maximum}
    assert not slow, f"commands slower than {maximum} ms at the median: {slow}"
