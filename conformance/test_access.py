"""Listening activity on a real mount: each open is logged, counted and kept across remounts (CAS-3, CAS-4)."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.harness import mount_library, mount_status, mounted_tracks

HIDDEN = ".musicfs"


def heat(mountpoint) -> dict:
    return json.loads((mountpoint / HIDDEN / "heat.json").read_bytes())


def played(mountpoint, real: str, timeout: float = 10.0) -> dict:
    """heat.json's entry for a track once its last close has reached the daemon (bytes counted)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = next((t for t in heat(mountpoint)["tracks"] if t["real_path"] == real), None)
        if entry is not None and entry["bytes_read"] > 0 or time.monotonic() > deadline:
            return entry
        time.sleep(0.05)


@pytest.mark.req("CAS-4", "CAS-3")
def test_every_open_is_logged_counted_and_kept_across_remounts(sample_library, tmp_path):
    work = tmp_path / "work"
    with mount_library(origin=sample_library[0], work=work) as mounted:
        mnt = mounted.mountpoint
        tracks = sorted(mounted_tracks(mnt).items())[:3]
        before = mount_status(mnt)["events"]["published"].get("FileAccessed", 0)
        order = [tracks[0], tracks[1], tracks[0], tracks[2]]
        for _, path in order:
            with open(path, "rb") as f:
                assert f.read(10_000)
        log = (mnt / HIDDEN / "access.log").read_text().splitlines()
        assert [line.split("\t")[2] for line in log[-4:]] == [os.path.relpath(p, mnt) for _, p in order]
        assert all(line.split("\t")[0].endswith("Z") for line in log)
        first = played(mnt, tracks[0][0])
        assert first["opens"] == 2 and first["bytes_read"] >= 10_000, first
        assert [played(mnt, real)["opens"] for real, _ in tracks[1:]] == [1, 1]
        assert mount_status(mnt)["events"]["published"]["FileAccessed"] - before == len(order)
        assert mount_status(mnt)["access"]["opens"] >= len(order)
        with pytest.raises(OSError):
            (mnt / HIDDEN / "heat.json").write_text("{}")

    with mount_library(origin=sample_library[0], work=work) as mounted:
        kept = {t["real_path"]: t["opens"] for t in heat(mounted.mountpoint)["tracks"]}
        assert kept == {tracks[0][0]: 2, tracks[1][0]: 1, tracks[2][0]: 1}
        assert (mounted.mountpoint / HIDDEN / "access.log").read_text() == ""  # the recent opens: this mount's
