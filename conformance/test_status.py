"""``musicfs status`` reports every running mount from its generated status file (FS-10)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.req("FS-10", "NFR-7.4")
def test_status_lists_the_mount_with_counts_and_origins(sample_mount, good_files, broken_files):
    cmd = [sys.executable, "-m", "musicfs.cli.main", "--state-dir", str(sample_mount.state_dir), "status"]
    reports = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True).stdout)
    (report,) = reports
    assert report["pid"] == sample_mount.pid
    assert report["index"]["tracks"] == len(good_files)
    assert report["index"]["skipped"] == len(broken_files)
    assert [o["id"] for o in report["origins"]] == ["local"]
    text = subprocess.run(cmd + [str(sample_mount.mountpoint)], capture_output=True, text=True, check=True).stdout
    assert f"{len(good_files)} in" in text and f"{len(broken_files)} malformed" in text
    missing = subprocess.run(cmd + ["/nonexistent/mount"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no musicfs daemon" in missing.stderr
