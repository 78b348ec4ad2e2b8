"""Remote origins behind the chaos proxy, and mounts of them, for the network scenarios.

One :class:`RemoteLab` per test module: a moto S3 server and an OpenSSH sshd
on loopback, each holding the same small library, each reached only through
its own Toxiproxy proxy so a test can cut, slow or corrupt the wire. The
library is scanned once per origin kind; every mount copies that index, so a
scenario starts in well under a second with a cold cache of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conformance.expected import sha256_of
from fixtures.bigfile import write_wav
from tests.harness import MountedLibrary, mount_library, mount_status, musicfs_cmd
from tests.s3server import MotoServer, aws_env, moto_server
from tests.sshserver import SshServer, ssh_server

KINDS = ("s3", "sftp")
BIG_FILES = 3
BIG_SIZE = 6 * 1024 * 1024  # several fill blocks: a fault can land in the middle of one file



def build_library(root: Path, sample: Path, good_files: list[dict], count: int = 10) -> dict[str, str]:
    """A few sample tracks and a few big WAVs under ``root``: real path -> sha256."""
    expected = {}
    for entry in sorted(good_files, key=lambda f: f["path"])[:count]:
        target = root / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample / entry["path"], target)
        expected[entry["path"]] = entry["sha256"]
    for i in range(BIG_FILES):
        relative = f"Recordings/take {i}.wav"
        (root / "Recordings").mkdir(parents=True, exist_ok=True)
        write_wav(root / relative, BIG_SIZE, seed=100 + i)
        expected[relative] = sha256_of(root / relative)
    return expected


def origin_lines(origin_id: str, kind: str, options: dict, priority: int = 1) -> list[str]:
    """The TOML lines of one ``[[origins]]`` table."""
    lines = ["[[origins]]", f'id = "{origin_id}"', f'type = "{kind}"', f"priority = {priority}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return lines + [""]


def cache_lines(read_timeout: float | None = None, *, headers: bool = False, prefetch: bool = False) -> list[str]:
    """The ``[cache]`` table of a lab's config, the header tier off unless ``headers``, and a
    ``[prefetch]`` table turning it off unless ``prefetch`` (then the caller may write its own).

    Why off: what the labs measure is reads that reach an origin (timed, broken,
    counted), and their tracks are a few kilobytes: the header tier would hold
    each of them whole after the scan, and no read would reach the origin; prefetch
    would fetch tracks nobody read yet, beside the reads measured. Their own
    behaviour, faults included, is tested with them on
    (``conformance/test_header_tier.py``, ``chaos/test_header_faults.py``,
    ``chaos/test_prefetch.py``).
    """
    lines = ["[cache]"]
    if read_timeout is not None:
        lines.append(f"read_timeout = {read_timeout}")
    if not headers:
        lines.append('headers_size = "0"')
    lines.append("")
    if not prefetch:
        lines += ["[prefetch]", "enabled = false", ""]
    return lines


def write_origin(path: Path, origin_id: str, kind: str, options: dict, *, headers: bool = False) -> Path:
    """A config file with this one origin (the header tier off unless ``headers``: :func:`cache_lines`)."""
    path.write_text("\n".join([*cache_lines(headers=headers), *origin_lines(origin_id, kind, options)]))
    return path


@dataclass
class RemoteLab:
    """The servers, their proxies and the library they all hold."""

    work: Path
    s3: MotoServer
    ssh: SshServer
    bucket: str
    proxies: dict  # kind -> toxiproxy-python Proxy
    expected: dict[str, str]  # real path -> sha256
    local: Path  # the same library on local disk (a replica that never fails)
    indexes: dict[str, Path] = field(default_factory=dict)  # config key -> scanned index

    def address(self, kind: str) -> tuple[str, int]:
        host, port = self.proxies[kind].listen.rsplit(":", 1)
        return host.strip("[]"), int(port)

    def options(self, kind: str, timeout: float) -> dict:
        """Origin options that reach ``kind`` through its proxy."""
        host, port = self.address(kind)
        if kind == "s3":
            return {"bucket": self.bucket, "endpoint": f"http://{host}:{port}", "prefix": "music/",
                    "region": "us-east-1", "timeout": timeout}
        known = self.work / f"known_hosts-{port}"
        if not known.exists():  # the proxy's port serves sshd's host key
            key = (self.ssh.dir / "ssh_host_ed25519_key.pub").read_text().split()
            known.write_text(f"[{host}]:{port} {key[0]} {key[1]}\n")
        return self.ssh.options(host=host, port=port, path=str(self.ssh.root / "music"),
                                known_hosts=str(known), timeout=timeout)

    def config(self, path: Path, origins: list[tuple[str, str]], *, read_timeout: float = 4.0,
               origin_timeout: float = 2.0, health_interval: float = 0.5) -> Path:
        """A config with ``origins`` as (id, kind) in priority order; kind "local" is the local copy."""
        lines = [*cache_lines(read_timeout), "[health]", f"interval = {health_interval}", ""]
        for priority, (origin_id, kind) in enumerate(origins, start=1):
            options = ({"path": str(self.local)} if kind == "local"
                       else self.options(kind, origin_timeout))
            lines += origin_lines(origin_id, kind, options, priority)
        path.write_text("\n".join(lines))
        return path

    def env(self) -> dict[str, str]:
        return aws_env(self.work / "aws-home")

    def index_for(self, origins: list[tuple[str, str]]) -> Path:
        """An index of the library for these origins, scanned once (through the proxies, fault-free)."""
        key = ",".join(f"{i}={k}" for i, k in origins)
        if key not in self.indexes:
            where = self.work / f"scan-{len(self.indexes)}"
            where.mkdir()
            config = self.config(where / "musicfs.toml", origins)
            index = where / "index.db"
            subprocess.run(musicfs_cmd("--state-dir", str(where / "state"), "scan", "--config", str(config),
                                       "--index", str(index)),
                           check=True, capture_output=True, env={**os.environ, **self.env()})
            self.indexes[key] = index
        return self.indexes[key]

    @contextmanager
    def mount(self, work: Path, origins: list[tuple[str, str]], **config) -> Iterator[MountedLibrary]:
        """A mount of these origins with a cold cache and a copy of their scanned index."""
        work.mkdir(parents=True, exist_ok=True)
        index = work / "index.db"
        if not index.exists():
            shutil.copyfile(self.index_for(origins), index)
        cfg = self.config(work / "musicfs.toml", origins, **config)
        with mount_library(config=cfg, work=work, index=index, env=self.env()) as mounted:
            yield mounted


@contextmanager
def remote_lab(work: Path, toxiproxy, sample: Path, good_files: list[dict]) -> Iterator[RemoteLab]:
    """Start both servers, fill them, put a proxy in front of each; always stop everything."""
    local = work / "library"
    expected = build_library(local, sample, good_files)
    with ExitStack() as stack:
        s3 = stack.enter_context(moto_server())
        files = {p: (local / p).read_bytes() for p in expected}
        bucket = s3.create_bucket(files, prefix="music/")
        ssh = stack.enter_context(ssh_server())
        shutil.copytree(local, ssh.root / "music")
        proxies = {}
        for kind, port in (("s3", s3.port), ("sftp", ssh.port)):
            name = f"{kind}-{time.monotonic_ns()}"
            proxies[kind] = toxiproxy.create(upstream=f"127.0.0.1:{port}", name=name, listen="127.0.0.1:0")
            stack.callback(proxies[kind].destroy)
        yield RemoteLab(work, s3, ssh, bucket, proxies, expected, local)


def origin_states(mountpoint: Path) -> dict[str, str]:
    return {o["id"]: o["state"] for o in mount_status(mountpoint)["origins"]}


def wait_for_state(mountpoint: Path, origin_id: str, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := origin_states(mountpoint)[origin_id]) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"origin {origin_id} stayed {current!r}, never {state!r}")
        time.sleep(0.1)
