"""A bucket on moto's S3 server reached through the HTTP fault proxy, for the scenarios that need
S3 answers a TCP proxy cannot fake (throttling, error pages, flipped bits, expired keys).

:func:`s3_lab` starts both and fills the bucket; :class:`S3Lab` writes configs that reach it
through the proxy, optionally with a local replica of the same files as a second origin.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chaos.httpfaults import FaultProxy, http_fault_proxy
from chaos.remote import cache_lines
from fixtures.bigfile import write_wav
from tests.s3server import MotoServer, moto_server

PREFIX = "music/"


@dataclass
class S3Lab:
    """A moto server with the library in a bucket, and the fault proxy the mounts go through."""

    work: Path
    server: MotoServer
    proxy: FaultProxy
    bucket: str
    data: dict[str, bytes]  # real path -> the object's bytes
    local: Path | None = None  # a folder with the same files, once made by local_copy()

    @property
    def expected(self) -> dict[str, str]:
        """Real path -> sha256 of the object."""
        return {real: hashlib.sha256(data).hexdigest() for real, data in self.data.items()}

    def object_path(self, real: str = "") -> str:
        """The URL path of an object (or, with no name, of every object) as the proxy sees it."""
        return f"/{self.bucket}/{PREFIX}{real}"

    def config(self, path: Path, read_timeout: float, *, backup: Path | None = None,
               health_interval: float = 30.0, headers: bool = False, **options) -> Path:
        """A config reaching the bucket ("bucket") through the proxy; with ``backup``, a local
        replica ("backup") second; the header tier off unless ``headers`` (``cache_lines``)."""
        origin = {"bucket": self.bucket, "endpoint": self.proxy.endpoint, "prefix": PREFIX,
                  "region": "us-east-1", **options}
        lines = [*cache_lines(read_timeout, headers=headers), "[health]", f"interval = {health_interval}",
                 "", "[[origins]]", 'id = "bucket"', 'type = "s3"', "priority = 1",
                 *(f"{key} = {json.dumps(value)}" for key, value in origin.items())]
        if backup is not None:
            lines += ["", "[[origins]]", 'id = "backup"', 'type = "local"', "priority = 2",
                      f"path = {json.dumps(str(backup))}"]
        path.write_text("\n".join(lines) + "\n")
        return path

    def local_copy(self, root: Path) -> Path:
        """The same files in a folder: a replica that never fails (also kept as ``local``)."""
        for real, data in self.data.items():
            (root / real).parent.mkdir(parents=True, exist_ok=True)
            (root / real).write_bytes(data)
        self.local = root
        return root


@contextmanager
def s3_lab(work: Path, data: dict[str, bytes]) -> Iterator[S3Lab]:
    """Start moto and the fault proxy, put ``data`` (real path -> bytes) in a new bucket; always stop both."""
    with moto_server() as server, http_fault_proxy(server.endpoint) as proxy:
        bucket = server.create_bucket(data, prefix=PREFIX)
        yield S3Lab(work, server, proxy, bucket, data)


@contextmanager
def wav_lab(work: Path, takes: list[str], size: int, seed: int) -> Iterator[S3Lab]:
    """:func:`s3_lab` holding ``takes`` as WAV files of ``size`` bytes (seeded from ``seed`` on)."""
    data = {real: write_wav(work / f"take-{i}.wav", size, seed=seed + i).read_bytes()
            for i, real in enumerate(takes)}
    with s3_lab(work, data) as lab:
        yield lab
