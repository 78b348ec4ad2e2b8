"""FAULT-35: who may enter a mount, and who may read what musicfs keeps on disk.

Another user is ``nobody`` (uid 65534), running a small stdlib-only script through
``subprocess`` with ``user=``/``group=``. The mounts and state live in a folder everyone may
traverse (pytest's own temp folder is root's alone, which would refuse ``nobody`` before FUSE
is even asked), so every refusal seen comes from FUSE or from the modes musicfs chose.

* Without ``allow_other`` the kernel refuses every other user: EACCES on stat, list, open.
* With ``--allow-other`` (or ``allow_other = true`` under ``[mount]``) the mount also carries
  ``default_permissions``: the kernel enforces the modes shown (files 0444, folders 0555), so
  ``nobody`` lists and reads exact bytes, may not execute a file, and may not write anything.
* The state directory (index, pid files, logs) and the chunk cache are created 0700 even by a
  daemon started with umask 000, so ``nobody`` cannot list them or open what is inside.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conformance.daemons import cleanup
from conformance.expected import sha256_of
from musicfs import daemon
from tests.cachefiles import chunk_files
from tests.harness import mounted_tracks, musicfs_cmd

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's may sit where nobody cannot reach it

_AS_NOBODY = r"""
import errno, hashlib, json, os, sys
results = {}
for name, op, path in json.loads(sys.argv[1]):
    try:
        if op == "stat":
            value = oct(os.stat(path).st_mode)
        elif op == "listdir":
            value = sorted(os.listdir(path))
        elif op == "sha256":
            with open(path, "rb") as f:
                value = hashlib.sha256(f.read()).hexdigest()
        elif op == "open_rdwr":
            os.close(os.open(path, os.O_RDWR)); value = "opened"
        elif op == "mkdir":
            os.mkdir(path); value = "made"
        elif op == "whoami":
            value = [os.getuid(), os.getgid(), os.getgroups()]
        elif op == "access_x":
            value = os.access(path, os.X_OK)
        else:
            raise SystemExit(f"unknown op {op}")
        results[name] = {"ok": value}
    except OSError as exc:
        results[name] = {"errno": errno.errorcode.get(exc.errno, str(exc.errno))}
print(json.dumps(results))
"""


def as_nobody(*ops: tuple[str, str, Path]) -> dict[str, dict]:
    """Run each (name, operation, path) as uid/gid 65534; name -> {"ok": value} or {"errno": "EACCES"}."""
    spec = json.dumps([(name, op, str(path)) for name, op, path in ops])
    done = subprocess.run([SYSTEM_PYTHON, "-I", "-c", _AS_NOBODY, spec], user=NOBODY, group=NOBODY,
                          extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def mount_options(mountpoint: Path) -> set[str]:
    target = str(daemon.canonical(mountpoint))
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == target:
                return set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


@pytest.fixture
def open_dir():
    """A folder every user may traverse (0755), removed after the mounts in it are gone."""
    path = Path(tempfile.mkdtemp(prefix="musicfs-f35-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def a_track(mountpoint: Path, good_files: list[dict]) -> tuple[Path, str]:
    """A mounted track and its sha256 (found by its real path, through the xattr)."""
    expected = {f["path"]: f["sha256"] for f in good_files}
    for real, path in mounted_tracks(mountpoint).items():
        if real in expected:
            return path, expected[real]
    raise AssertionError("no track in the mount")


@pytest.mark.req("FAULT-35")
def test_f35_without_allow_other_other_users_get_eacces(open_dir, mount_factory, sample_library, good_files):
    mounted = mount_factory(origin=sample_library[0], work=open_dir / "plain")
    mnt = mounted.mountpoint
    track, _ = a_track(mnt, good_files)
    assert "allow_other" not in mount_options(mnt)
    results = as_nobody(("stat", "stat", mnt), ("list", "listdir", mnt), ("read", "sha256", track),
                        ("status", "sha256", mnt / ".musicfs" / "status.json"))
    assert results == {name: {"errno": "EACCES"} for name in ("stat", "list", "read", "status")}, results
    assert os.listdir(mnt), "the owner lost access"


@pytest.mark.req("FAULT-35", "FS-4")
@pytest.mark.parametrize("how", ["--allow-other", "config"])
def test_f35_with_allow_other_the_modes_shown_are_enforced(open_dir, mount_factory, sample_library,
                                                           good_files, how):
    if how == "config":
        config = open_dir / "musicfs.toml"
        config.write_text(f'[mount]\nallow_other = true\n\n[[origins]]\nid = "local"\ntype = "local"\n'
                          f'path = {json.dumps(str(sample_library[0]))}\n')
        mounted = mount_factory(config=config, work=open_dir / "config")
    else:
        mounted = mount_factory(origin=sample_library[0], work=open_dir / "flag", extra_args=("--allow-other",))
    mnt = mounted.mountpoint
    assert {"allow_other", "default_permissions", "ro"} <= mount_options(mnt)
    track, digest = a_track(mnt, good_files)
    folder = track.parent
    assert stat.S_IMODE(os.stat(track).st_mode) == 0o444 and stat.S_IMODE(os.stat(folder).st_mode) == 0o555
    results = as_nobody(("list", "listdir", folder), ("read", "sha256", track), ("exec", "access_x", track),
                        ("enter", "access_x", folder), ("write", "open_rdwr", track),
                        ("mkdir", "mkdir", folder / "new"))
    assert results["list"] == {"ok": sorted(os.listdir(folder))}
    assert results["read"] == {"ok": digest}
    assert results["exec"] == {"ok": False}, "0444 must not be executable: the kernel is not checking modes"
    assert results["enter"] == {"ok": True}
    for name in ("write", "mkdir"):
        assert results[name]["errno"] in ("EROFS", "EACCES", "EPERM"), results


@pytest.mark.req("FAULT-35")
def test_f35_state_and_cache_are_created_private_whatever_the_umask(open_dir, sample_library):
    """A background ``musicfs mount`` with the default places (XDG state and cache homes), started
    with umask 000: every folder it creates is 0700 and nobody can look inside."""
    xdg_state, xdg_cache, mnt = open_dir / "xdg-state", open_dir / "xdg-cache", open_dir / "mnt"
    mnt.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(xdg_state), "XDG_CACHE_HOME": str(xdg_cache)}
    with cleanup(mnt) as spawned:
        started = subprocess.run(musicfs_cmd("mount", "--origin", str(sample_library[0]), str(mnt)),
                                 env=env, capture_output=True, text=True, timeout=120,
                                 preexec_fn=lambda: os.umask(0))
        state = xdg_state / "musicfs"
        info = daemon.read_pidfile(daemon.RunFiles.for_mountpoint(state, mnt))
        if info:
            spawned.append(info["pid"])
        assert started.returncode == 0, started.stderr
        assert sha256_of(_first_file(mnt))  # something in the cache
        cache = Path(info["cache_dir"])
        index = Path(info["index"])
        created = [xdg_state, state, state / "run", state / "log", index.parent, xdg_cache, cache.parent, cache]
        modes = {str(p.relative_to(open_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in created}
        assert set(modes.values()) == {"0o700"}, modes
        deadline = time.monotonic() + 10
        while not chunk_files(cache) and time.monotonic() < deadline:
            time.sleep(0.05)  # the file's chunks are written just after its read
        chunk = chunk_files(cache)[0]
        results = as_nobody(("state", "listdir", state), ("index", "sha256", index),
                            ("log", "sha256", Path(info["log"])), ("cache", "listdir", cache),
                            ("chunk", "sha256", chunk))
        assert results == {name: {"errno": "EACCES"} for name in results}, results
        stopped = subprocess.run(musicfs_cmd("umount", str(mnt)), env=env, capture_output=True, text=True,
                                 timeout=60)
        assert stopped.returncode == 0, stopped.stderr


def _first_file(mountpoint: Path) -> Path:
    for dirpath, dirnames, filenames in os.walk(mountpoint):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if filenames:
            return Path(dirpath) / filenames[0]
    raise AssertionError("no file in the mount")


def test_the_other_user_really_is_nobody():
    """Else every refusal above would prove nothing."""
    assert as_nobody(("me", "whoami", Path("/"))) == {"me": {"ok": [NOBODY, NOBODY, []]}}
