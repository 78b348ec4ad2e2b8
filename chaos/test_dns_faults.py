"""DNS failure for one origin (FAULT-12): the origin fails fast, the other serves, nothing stalls.

The mount runs in a mount namespace of its own (``unshare --mount``) whose
``/etc/resolv.conf`` names a resolver on a loopback address that never
answers, or refuses every query; see :mod:`chaos.dnslab`, which does the
mounting and measuring in there and reports JSON. Nothing is asked of this
machine's real resolver, and nothing the namespace mounts outlives it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from chaos.proxy import ROOT

BOUND = 2.0  # the catalogue: an origin whose name does not resolve fails within 2 s
SLACK = 0.5  # for the replica's own read and two shared cores
BACKOFF = 0.1 + 0.5 + 2.0  # the retry schedule's waits, for a track only the bucket holds

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                reason="needs root and unshare(1) for a private mount namespace")


def dns_lab(mode: str, tmp_path, sample: str, good_files: list[dict]) -> dict:
    files = tmp_path / "files.json"
    files.write_text(json.dumps(good_files))
    cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m", "chaos.dnslab",
           "--work", str(tmp_path / "lab"), "--mode", mode, "--outside", os.readlink("/proc/self/ns/mnt"),
           "--sample", str(sample), "--files", str(files)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"the DNS lab failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.req("FAULT-12", "G3", "NFR-7.2")
@pytest.mark.parametrize("mode", ["silent", "servfail"])
def test_f12_an_origin_whose_name_does_not_resolve_fails_fast_and_the_other_serves(
        mode, tmp_path, sample_library, good_files):
    """A bucket named by a host name the resolver never answers for (or refuses), beside a local
    replica: the bucket is reported unreachable within 2 s of the mount, every read the replica can
    serve is exact and prompt, and a track only the bucket holds fails with EIO after the retry
    schedule of fast failures (a lookup left to the C library would hold each attempt 10 s)."""
    result = dns_lab(mode, tmp_path, sample_library[0], good_files)
    if mode == "silent":  # the fault is real: the C library alone would wait far longer than the bound
        assert result["lookup_seconds"] is None, f"a silent resolver answered: {result['lookup_seconds']}"
    else:
        assert result["lookup_seconds"] is not None and result["lookup_seconds"] < 1.0
    reads = result["reads"]
    assert all(read["exact"] for read in reads), reads
    first, *rest = reads
    assert first["seconds"] <= BOUND + SLACK, f"the first read took {first['seconds']:.2f} s"
    slowest = max(read["seconds"] for read in rest)
    assert slowest <= 1.0, f"a later read took {slowest:.2f} s: reads stall on the unresolvable origin"
    assert result["walk_seconds"] <= 1.0
    assert result["unreachable_after"] is not None and result["unreachable_after"] <= BOUND + SLACK, (
        f"the bucket was reported unreachable {result['unreachable_after']} s after the mount")
    assert result["mount_seconds"] <= BOUND + 8.0  # one bounded health check before mounting
    only = result["only_in_bucket"]
    assert only["errno"] == errno.EIO, only
    assert only["seconds"] <= BACKOFF + BOUND + SLACK, f"EIO after {only['seconds']:.2f} s: attempts stalled"
    cloud = result["origins"]["cloud"]
    assert cloud["state"] == "unhealthy" and "resolv" in (cloud["error"] or ""), cloud
    assert result["origins"]["backup"]["state"] == "healthy"
    assert result["reader"]["fills_failed"] == 1  # the track only the bucket holds
    assert result["alive"]
    assert result["log_lines"] <= 20, f"{result['log_lines']} log lines"
