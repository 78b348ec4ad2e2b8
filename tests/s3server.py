"""A throwaway moto S3 server on loopback, for testing the S3 origin against a real HTTP endpoint.

Why a subprocess and not moto's in-process mocks: the origin must be tested
through botocore's real HTTP stack (signing, ranged GETs, error bodies,
timeouts), and a FUSE daemon started by a test runs in another process and
has to reach the same server. ``python -m moto.server`` listens on
127.0.0.1 and a free port; it is stopped when the context exits, and (via
``PR_SET_PDEATHSIG``) when the test process dies without cleaning up.

Credentials: moto accepts any keys unless authentication is enforced (see
:meth:`MotoServer.enforce_auth`). The helpers pass keys explicitly to the
clients they make and never read or write ``~/.aws``; :func:`isolate_aws_env`
and :func:`aws_env` give the code under test an environment with only the
keys a test chose, and no route to the real credential chain (no shared
files, no instance metadata service).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

from tests.processes import die_with_parent

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
REGION = "us-east-1"
DUMMY_KEY_ID = "AKIAMUSICFSTESTKEY01"
DUMMY_SECRET = "musicfs-test-secret-0000000000000000000"

# the environment variables through which boto3 finds credentials and settings elsewhere
_AWS_PREFIXES = ("AWS_", "BOTO_")


@dataclass
class MotoServer:
    """A running moto server and helpers to fill it."""

    endpoint: str
    port: int
    log: Path  # the server's stderr
    proc: subprocess.Popen = field(repr=False)
    _clients: dict = field(default_factory=dict, repr=False)

    def client(self, key_id: str = DUMMY_KEY_ID, secret: str = DUMMY_SECRET, service: str = "s3"):
        """A boto3 client for this server with explicit keys (not the environment's); made once, reused."""
        if (key_id, secret, service) not in self._clients:
            self._clients[key_id, secret, service] = boto3.client(
                service, endpoint_url=self.endpoint, region_name=REGION,
                aws_access_key_id=key_id, aws_secret_access_key=secret,
                config=Config(s3={"addressing_style": "path"},
                              retries={"total_max_attempts": 1, "mode": "standard"}))
        return self._clients[key_id, secret, service]

    def create_bucket(self, files: dict[str, bytes] | None = None, prefix: str = "",
                      name: str | None = None, **keys) -> str:
        """A new bucket (a fresh random name unless given) holding ``files`` under ``prefix``."""
        name = name or f"musicfs-{uuid.uuid4().hex[:16]}"
        client = self.client(**keys)
        client.create_bucket(Bucket=name)
        self.upload(name, files or {}, prefix, **keys)
        return name

    def upload(self, bucket: str, files: dict[str, bytes], prefix: str = "", **keys) -> None:
        client = self.client(**keys)
        for path, data in files.items():
            client.put_object(Bucket=bucket, Key=prefix + path, Body=data)

    def add_user(self, name: str, actions: str | list[str] = "s3:*") -> tuple[str, str]:
        """An IAM user allowed ``actions`` (default: everything on S3); returns its access key (id, secret).

        Call it while authentication is not enforced (IAM calls are checked too).
        """
        iam = self.client(service="iam")
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        return self.new_key(name)

    def new_key(self, user: str) -> tuple[str, str]:
        key = self.client(service="iam").create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def delete_key(self, user: str, key_id: str) -> None:
        self.client(service="iam").delete_access_key(UserName=user, AccessKeyId=key_id)

    def _post(self, path: str, body: bytes = b"") -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("POST", path, body=body)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"moto {path} answered {response.status}: {data[:200]!r}")
            return data
        finally:
            conn.close()

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Check every request's signature and IAM permissions until the block ends.

        moto's server skips authentication unless told otherwise (its
        ``INITIAL_NO_AUTH_ACTION_COUNT``, settable at run time through
        ``/moto-api/reset-auth``). Unknown or deleted keys then get
        ``InvalidAccessKeyId``, wrong secrets ``SignatureDoesNotMatch``.
        """
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    @contextmanager
    def auth_paused(self) -> Iterator[None]:
        """Inside :meth:`enforce_auth`: let requests through unchecked (to rotate keys as an admin)."""
        self._post("/moto-api/reset-auth", b"inf")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"0")



def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    """The server's environment: ours without AWS settings, and authentication off until asked for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_AWS_PREFIXES)}
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/moto-api/")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """Start ``python -m moto.server`` on 127.0.0.1 and a free port; yield it; always stop it."""
    tmp = Path(tempfile.mkdtemp(prefix="musicfs-moto-"))
    log = tmp / "moto.log"
    proc = server = None
    try:
        for _ in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            with log.open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    env=_server_env(), preexec_fn=die_with_parent)
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and not _answers(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not answer on port {port} within {START_TIMEOUT} s:\n"
                                       f"{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)
            if proc.poll() is None:
                break
        else:
            raise RuntimeError(f"moto exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        server = MotoServer(f"http://127.0.0.1:{port}", port, log, proc)
        yield server
    finally:
        if server is not None:
            for client in server._clients.values():
                client.close()
        if proc is not None:
            _stop(proc)
        log.unlink(missing_ok=True)
        tmp.rmdir()


def aws_env(home: Path, key_id: str | None = DUMMY_KEY_ID, secret: str | None = DUMMY_SECRET,
            base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment (e.g. for a daemon subprocess) whose only AWS credentials are the ones given.

    Every ``AWS_*`` variable of ``base`` (default: ours) is dropped; the shared
    credentials and config files point into ``home`` (not ``~/.aws``), and the
    instance metadata service is off, so nothing off this machine is asked.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(_AWS_PREFIXES)}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials-unused"),
               AWS_CONFIG_FILE=str(home / "aws-config-unused"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION=REGION)
    if key_id is not None and secret is not None:
        env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    return env


def isolate_aws_env(monkeypatch, home: Path, key_id: str | None = DUMMY_KEY_ID,
                    secret: str | None = DUMMY_SECRET) -> None:
    """Make this test's environment what :func:`aws_env` describes (undone after the test)."""
    for name in list(os.environ):
        if name.startswith(_AWS_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in aws_env(home, key_id, secret, base={}).items():
        monkeypatch.setenv(name, value)


def write_credentials(path: Path, key_id: str, secret: str, profile: str = "default") -> Path:
    """An AWS-style shared credentials file, replaced atomically (as a rotation tool would)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(f"[{profile}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
