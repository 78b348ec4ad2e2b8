"""Temporary S3 keys that really expire, for checking that a mount renews its credentials in time (B2-4).

Real temporary credentials (STS, B2 authorization tokens) live for hours and
moto does not refuse expired session tokens, so the lab makes its own:

* :class:`KeyIssuer`, in the test, keeps a few IAM users with S3 access and an
  access key each ready in moto (signed with an admin key), and runs a reaper
  that deletes each handed-out key as soon as it expires, so (with moto's
  authentication enforced) a request signed with an expired key is refused
  with ``InvalidAccessKeyId``, as S3 refuses an expired token;
* this file, run as a ``credential_process`` (``python tempkeys.py DIR``),
  claims one ready key, gives it an ``Expiration`` ``lifetime`` seconds ahead
  and prints it as botocore expects, and appends what it handed out (key,
  times, the process that asked) to ``DIR/issued.jsonl``. It uses only the
  standard library and takes milliseconds: what is measured is the mount's
  renewal, not the lab's speed (a slow source is what the renewal margin is for).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SETTINGS, ISSUED, READY, CLAIMED = "issuer.json", "issued.jsonl", "ready", "claimed"
POOL = 3  # keys kept ready
POLICY = json.dumps({"Version": "2012-10-17",
                     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})


def issue(folder: Path, wait: float = 10.0) -> dict:
    """Claim a ready key, valid for ``lifetime`` seconds from now; record it; the credential_process answer."""
    started = time.time()
    lifetime = json.loads((folder / SETTINGS).read_text())["lifetime"]
    while True:
        for name in sorted(os.listdir(folder / READY)):
            try:
                os.rename(folder / READY / name, folder / CLAIMED / name)  # atomic: one claimant wins
            except FileNotFoundError:
                continue
            key = json.loads((folder / CLAIMED / name).read_text())
            issued = time.time()
            record = {**key, "started": started, "issued": issued, "expires": issued + lifetime,
                      "pid": os.getppid()}
            with (folder / ISSUED).open("a") as log:
                log.write(json.dumps(record) + "\n")
            return {"Version": 1, "AccessKeyId": key["key_id"], "SecretAccessKey": key["secret"],
                    "Expiration": datetime.fromtimestamp(record["expires"], UTC).isoformat()}
        if time.time() - started > wait:
            raise SystemExit("tempkeys: no key ready")
        time.sleep(0.02)


@dataclass
class Issued:
    key_id: str
    secret: str  # a throwaway key of the test's moto server: kept to show it is refused once expired
    user: str
    started: float  # epoch seconds the credential process began
    issued: float  # ... and handed the key out
    expires: float
    pid: int  # the process that ran the credential process (the daemon)
    deleted: float | None = None  # when the reaper deleted it


class KeyIssuer:
    """The test side: keys made ready for the script, and the reaper that deletes expired ones."""

    def __init__(self, folder: Path, endpoint: str, admin: tuple[str, str], lifetime: float):
        import boto3
        from botocore.config import Config

        self.folder, self.lifetime = folder, lifetime
        for sub in (READY, CLAIMED):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS).write_text(json.dumps({"lifetime": lifetime}))
        (folder / ISSUED).touch()
        self._iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                                 aws_access_key_id=admin[0], aws_secret_access_key=admin[1],
                                 config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        self._deleted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key issuer", daemon=True)
        self.problems: list[str] = []

    def credential_process(self) -> str:
        """The ``credential_process`` line of a profile that gets its keys here."""
        return f'"{sys.executable}" "{Path(__file__).resolve()}" "{self.folder}"'

    def issued(self) -> list[Issued]:
        lines = (self.folder / ISSUED).read_text().split("\n")[:-1]  # the last may be half-written
        keys = [Issued(**json.loads(line)) for line in lines if line.strip()]
        for key in keys:
            key.deleted = self._deleted.get(key.key_id)
        return keys

    def _mint(self) -> None:
        user = f"temp-{uuid.uuid4().hex[:12]}"
        self._iam.create_user(UserName=user)
        self._iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=POLICY)
        key = self._iam.create_access_key(UserName=user)["AccessKey"]
        tmp = self.folder / f"{user}.tmp"
        tmp.write_text(json.dumps({"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"],
                                   "user": user}))
        tmp.rename(self.folder / READY / f"{user}.json")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                now = time.time()
                for key in self.issued():
                    if key.expires <= now and key.key_id not in self._deleted:
                        self._iam.delete_access_key(UserName=key.user, AccessKeyId=key.key_id)
                        self._deleted[key.key_id] = time.time()
                if len(os.listdir(self.folder / READY)) < POOL:
                    self._mint()
            except Exception as exc:  # moto busy: again in 20 ms (a late deletion shows in the test)
                self.problems.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> KeyIssuer:
        for _ in range(POOL):
            self._mint()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._iam.close()


if __name__ == "__main__":
    print(json.dumps(issue(Path(sys.argv[1]))))
