"""NFR-5.1: the metadata cache has a size bound, 100 MB unless configured, and stays within it.

What a walk of a large tree costs a mount is what the kernel is handed: every name listed or
looked up becomes an entry the kernel keeps (until it runs short of memory, not until musicfs
does), and the daemon keeps a node for each (:mod:`musicfs.index.metacache`). Unbounded, a walk
of 200,000 entries grew the daemon by ~120 MB; a million, by ~600 MB.

The same walk of :data:`ENTRIES` synthetic tracks (an index without audio: only names and
attributes are asked for) is made on two mounts: one with ``[cache] metadata_size`` set to
:data:`SMALL_BOUND_MB`, far below what the walk costs unbounded, and one with the default. On
each the daemon's high-water mark over the walk (VmHWM, reset where the walk begins), less its
RSS before it, must stay within the bound plus :data:`SLACK_MB` (Python's own allocations for
the requests in flight). The walk with the small bound must not cost the daemon much more than
with the default: letting nodes go must not turn browsing into a crawl. That is judged on the
daemon's CPU time over each walk (every thread: the requests, the kernel notices of the nodes let
go), which another tenant of a shared machine does not move the way it moves a wall-clock time;
the wall-clock times are shown beside it. The million-entry walk is perf's (``make perf``).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from conformance.measure import (
    SYNTHETIC_ORIGIN_ID,
    build_synthetic_index,
    copy_index,
    cpu_seconds,
    proc_status_mb,
    settle,
)
from tests.harness import mount_status

ENTRIES = 60_000  # tracks in the synthetic tree (plus their album and artist folders)
SMALL_BOUND_MB = 8  # unbounded, the walk would cost ~35 MB
SLACK_MB = 8
DEFAULT_BOUND_MB = 100
CPU_RATIO = 2.0  # the daemon's CPU over the walk with the small bound, at most this many times...
CPU_SLACK_S = 0.5  # ...plus this, the CPU of the same walk with the default bound

CONFIG = """[cache]
{setting}

[[origins]]
id = "{origin_id}"
type = "local"
path = {path}
"""


@pytest.fixture(scope="module")
def large_index(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "synthetic-indexes"
    return build_synthetic_index(base / f"tracks-{ENTRIES}.db", ENTRIES, seed=51)


def mount_with(mount_factory, tmp_path, name: str, index, setting: str = ""):
    origin = tmp_path / "origin"  # empty: a walk reads no byte
    origin.mkdir(exist_ok=True)
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG.format(setting=setting, origin_id=SYNTHETIC_ORIGIN_ID,
                                    path=json.dumps(str(origin))))
    return mount_factory(config=config, index=copy_index(index, tmp_path / name / "index.db"),
                         work=tmp_path / name)


def walk(root) -> int:
    """List every directory and lstat every entry, as ``find -ls`` would; return entries seen."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            seen += 1
    return seen


def walk_within(mounted) -> dict:
    """Walk the whole tree; the daemon's figures over it."""
    before = settle(mounted.pid)
    with open(f"/proc/{mounted.pid}/clear_refs", "w") as knob:
        knob.write("5\n")  # VmHWM from here: the most the walk ever made it hold
    started, cpu = time.perf_counter(), cpu_seconds(mounted.pid)
    seen = walk(mounted.mountpoint)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(mounted.pid) - cpu
    peak = proc_status_mb(mounted.pid, "VmHWM")
    status = mount_status(mounted.mountpoint)
    return {"seen": seen, "before": before, "peak": peak, "growth": peak - before, "seconds": seconds,
            "cpu": cpu,
            "fuse": status["fuse"], "bound": status["metadata_cache"]}


@pytest.mark.req("NFR-5.1")
def test_metadata_cache_stays_within_its_bound_while_walking_a_large_tree(large_index, mount_factory,
                                                                          tmp_path, capsys):
    small = mount_with(mount_factory, tmp_path, "small", large_index, f'metadata_size = "{SMALL_BOUND_MB}MB"')
    bounded = walk_within(small)
    default = mount_with(mount_factory, tmp_path, "default", large_index)
    unbounded = walk_within(default)
    lines = []
    for name, figures, bound_mb in (("small", bounded, SMALL_BOUND_MB), ("default", unbounded, DEFAULT_BOUND_MB)):
        assert figures["bound"]["metadata_cache_bytes"] == bound_mb * 10**6
        assert figures["seen"] > ENTRIES
        assert figures["fuse"]["known_inodes"] <= figures["bound"]["max_nodes"]
        lines.append(f"{name} bound {bound_mb} MB: RSS {figures['before']:.1f} -> peak {figures['peak']:.1f} MB "
                     f"(+{figures['growth']:.1f}) in {figures['seconds']:.1f} s, daemon CPU {figures['cpu']:.1f} s; nodes kept "
                     f"{figures['fuse']['known_inodes']} of at most {figures['bound']['max_nodes']}, "
                     f"{figures['fuse'].get('let_go')} let go")
    with capsys.disabled():
        print(f"\nNFR-5.1 walk of {bounded['seen']} entries: " + "; ".join(lines))
    assert bounded["growth"] <= SMALL_BOUND_MB + SLACK_MB, (
        f"walking {bounded['seen']} entries grew the daemon by {bounded['growth']:.1f} MB with a "
        f"{SMALL_BOUND_MB} MB metadata bound")
    assert unbounded["growth"] <= DEFAULT_BOUND_MB + SLACK_MB
    assert bounded["fuse"]["let_go"] > 0, "the small bound never let a node go"
    assert bounded["cpu"] <= CPU_RATIO * unbounded["cpu"] + CPU_SLACK_S, (
        f"letting nodes go slowed the walk down: the daemon spent {bounded['cpu']:.1f} s of CPU on it "
        f"against {unbounded['cpu']:.1f} s with the default bound")
    assert small.alive() and default.alive()
