"""FAULT-34: no origin credential ever shows, wherever musicfs writes or shows something.

One daemon serves a library split between an S3 bucket (moto) and an SFTP server (OpenSSH),
with credentials nobody could guess (an access key id, a secret key and a session token in the
environment; a private key file for SFTP), logging at DEBUG. It is run through
:mod:`tests.faulty_daemon` with every failing ranged read of either origin escaping as an
unexpected exception, so failures are logged with full tracebacks. Then both origins fail for
real (S3 starts checking signatures and refuses the keys; sshd stops) and uncached reads fail.

Nothing of the credentials may appear in: the scan's and the daemon's output, the tracebacks,
``/proc/<pid>/cmdline``, ``/proc/mounts`` (whose source field is the constant "musicfs"),
``musicfs status --json``, ``/.musicfs/status.json`` and ``errors.json``, nor in the message
refusing a config that holds a credential inline. (``/proc/<pid>/environ`` holds the
environment's keys by design; only the process's owner and root can read it.)

A second check: an S3 endpoint over HTTPS that answers every request with a redirect to plain
HTTP on another port. botocore never follows ``Location`` (it sends with redirects off and only
re-signs for another region at the configured endpoint), so no request, let alone one carrying
the signature or the session token, reaches the plain-HTTP side; the read fails with EIO.
"""

from __future__ import annotations

import datetime
import errno
import http.server
import ipaddress
import json
import secrets
import shutil
import signal
import ssl
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chaos.remote import origin_lines
from conformance.daemons import cleanup, launcher_cmd, wait_serving
from musicfs import daemon
from tests.harness import mount_library, mounted_tracks, musicfs_cmd
from tests.s3server import aws_env, moto_server
from tests.sshserver import ssh_server


def make_secrets() -> dict[str, str]:
    alphabet = string.ascii_uppercase + string.digits
    return {"AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16)),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)[:40],
            "AWS_SESSION_TOKEN": "FwoG" + secrets.token_urlsafe(150)}


def key_material(key_file: Path) -> list[str]:
    """The base64 lines of a private key file (each long enough to be unmistakable)."""
    return [line.strip() for line in key_file.read_text().splitlines()
            if line.strip() and not line.startswith("-----") and len(line.strip()) >= 16]


def leaks(text: str, secret_values: list[str]) -> list[str]:
    """Which secrets (or a 16-character piece of one) appear in ``text``."""
    found = []
    for value in secret_values:
        pieces = {value} | {value[i:i + 16] for i in range(0, max(1, len(value) - 15), 8)}
        if any(piece in text for piece in pieces):
            found.append(value[:6] + "...")
    return found


def read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


@pytest.fixture
def split_library(sample_library, good_files, tmp_path) -> Iterator[dict]:
    """Half the good tracks in a moto bucket, half on an sshd; a config naming both."""
    files = sorted(good_files, key=lambda f: f["path"])
    on_s3, on_sftp = files[::2], files[1::2]
    with moto_server() as s3, ssh_server() as ssh:
        bucket = s3.create_bucket({f["path"]: (sample_library[0] / f["path"]).read_bytes() for f in on_s3},
                                  prefix="music/")
        root = ssh.root / "music"
        for f in on_sftp:
            (root / f["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample_library[0] / f["path"], root / f["path"])
        config = tmp_path / "musicfs.toml"
        config.write_text("\n".join(
            ["[cache]", "read_timeout = 3.0", "", "[health]", "interval = 0.5", ""]
            + origin_lines("b2", "s3", {"bucket": bucket, "endpoint": s3.endpoint, "prefix": "music/",
                                        "region": "us-east-1", "timeout": 2.0}, 1)
            + origin_lines("nas", "sftp", ssh.options(path=str(root), timeout=2.0), 2)))
        yield {"s3": s3, "ssh": ssh, "config": config, "bucket": bucket,
               "s3_files": on_s3, "sftp_files": on_sftp}


@pytest.mark.req("FAULT-34")
def test_f34_no_credential_in_logs_tracebacks_cmdline_mounts_or_status(split_library, tmp_path):
    lab = split_library
    creds = make_secrets()
    secret_values = [*creds.values(), *key_material(lab["ssh"].key_file)]
    env = {**aws_env(tmp_path / "aws", creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]),
           "AWS_SESSION_TOKEN": creds["AWS_SESSION_TOKEN"]}
    state, index, mnt, log = tmp_path / "state", tmp_path / "index.db", tmp_path / "mnt", tmp_path / "daemon.log"
    mnt.mkdir()
    scanned = subprocess.run(musicfs_cmd("-v", "-v", "--state-dir", str(state), "scan", "--config",
                                         str(lab["config"]), "--index", str(index)),
                             env=env, capture_output=True, text=True, timeout=120)
    assert scanned.returncode == 0, scanned.stderr
    outputs = {"scan": scanned.stdout + scanned.stderr}

    cmd = launcher_cmd(["origin=s3", "origin=sftp"],
                       ["-v", "-v", "--state-dir", str(state), "mount", "--foreground", "--config",
                        str(lab["config"]), "--index", str(index), "--cache-dir", str(tmp_path / "cache"),
                        str(mnt)])
    with cleanup(mnt) as spawned, open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        spawned.append(proc)
        wait_serving(mnt, proc)
        tracks = mounted_tracks(mnt)
        s3_real = [f["path"] for f in lab["s3_files"]]
        sftp_real = [f["path"] for f in lab["sftp_files"]]
        for real in s3_real[:3] + sftp_real[:3]:  # both origins serve (and log at DEBUG doing so)
            assert tracks[real].read_bytes()

        # both origins fail for real; uncached reads fail, through the injected unexpected exception
        with lab["s3"].enforce_auth():
            started = time.monotonic()
            assert read_errno(tracks[s3_real[-1]]) == errno.EIO
            lab["ssh"].stop()
            assert read_errno(tracks[sftp_real[-1]]) == errno.EIO
            assert time.monotonic() - started < 30
            time.sleep(1.5)  # a few failed health probes get logged too
            status_file = (mnt / ".musicfs" / "status.json").read_text()
            outputs["status.json"] = status_file
            outputs["errors.json"] = (mnt / ".musicfs" / "errors.json").read_text()
            shown = subprocess.run(musicfs_cmd("--state-dir", str(state), "status", "--json"), env=env,
                                   capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr
            outputs["musicfs status --json"] = shown.stdout
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                outputs["cmdline"] = f.read().replace(b"\0", b" ").decode()
            outputs["/proc/mounts"] = Path("/proc/mounts").read_text()
            entry = [line.split() for line in outputs["/proc/mounts"].splitlines()
                     if line.split()[1] == str(daemon.canonical(mnt))]
            assert entry and entry[0][0] == "musicfs", entry
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    outputs["daemon log"] = log.read_text(errors="replace")

    daemon_log = outputs["daemon log"]
    assert " DEBUG " in daemon_log, "the daemon did not log at DEBUG"
    assert "Traceback (most recent call last)" in daemon_log and "injected fault: s3 read" in daemon_log
    assert "injected fault: sftp read" in daemon_log
    assert json.loads(outputs["musicfs status --json"])[0]["origins"], outputs["musicfs status --json"]
    found = {where: leaks(text, secret_values) for where, text in outputs.items()}
    assert not any(found.values()), {where: which for where, which in found.items() if which}


@pytest.mark.req("FAULT-34")
@pytest.mark.parametrize(("kind", "key"), [("s3", "aws_secret_access_key"), ("sftp", "password")])
def test_f34_a_credential_written_in_the_config_is_refused_without_repeating_it(tmp_path, kind, key):
    value = secrets.token_urlsafe(24)
    options = ({"bucket": "b", "endpoint": "http://127.0.0.1:9"} if kind == "s3"
               else {"host": "127.0.0.1", "user": "me", "key_file": str(tmp_path / "k")})
    config = tmp_path / "musicfs.toml"
    config.write_text("\n".join(origin_lines("x", kind, {**options, key: value})))
    (tmp_path / "mnt").mkdir()
    refused = subprocess.run(musicfs_cmd("-v", "-v", "--state-dir", str(tmp_path / "s"), "mount", "--config",
                                         str(config), str(tmp_path / "mnt")),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert key in refused.stderr, refused.stderr
    assert value not in refused.stdout + refused.stderr


# -- HTTPS -> HTTP redirect ------------------------------------------------------------------
def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (made here: nothing of the machine's trust store)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None):
    """A stdlib HTTP(S) server on 127.0.0.1 and a free port, in a thread; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.req("FAULT-34")
def test_f34_auth_is_not_forwarded_across_an_https_to_http_redirect(sample_library, good_files, tmp_path):
    creds = make_secrets()
    env = {**aws_env(tmp_path / "aws", creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]),
           "AWS_SESSION_TOKEN": creds["AWS_SESSION_TOKEN"]}
    plain_requests: list[dict] = []
    tls_requests: list[dict] = []

    class Plain(http.server.BaseHTTPRequestHandler):
        def _any(self):
            plain_requests.append({"path": self.path, "headers": dict(self.headers)})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _any

        def log_message(self, *args):
            pass

    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    files = sorted(good_files, key=lambda f: f["path"])[:4]
    with moto_server() as s3, serving(Plain) as plain_port:
        class Redirect(http.server.BaseHTTPRequestHandler):
            def _any(self):
                tls_requests.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{plain_port}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _any

            def log_message(self, *args):
                pass

        bucket = s3.create_bucket({f["path"]: (sample_library[0] / f["path"]).read_bytes() for f in files},
                                  prefix="music/")
        options = {"bucket": bucket, "prefix": "music/", "region": "us-east-1", "timeout": 2.0}

        def config(path: Path, endpoint: str) -> Path:
            path.write_text("\n".join(["[cache]", "read_timeout = 3.0", ""] +
                                      origin_lines("b2", "s3", {**options, "endpoint": endpoint})))
            return path

        index = tmp_path / "index.db"  # scanned from the real server, mounted through the redirecting one
        subprocess.run(musicfs_cmd("--state-dir", str(tmp_path / "s"), "scan", "--config",
                                   str(config(tmp_path / "scan.toml", s3.endpoint)), "--index", str(index)),
                       env=env, check=True, capture_output=True, timeout=120)
        with serving(Redirect, tls) as tls_port, mount_library(
                config=config(tmp_path / "mount.toml", f"https://127.0.0.1:{tls_port}"), index=index,
                work=tmp_path / "m", env={**env, "AWS_CA_BUNDLE": str(cert)}) as mounted:
            paths = list(mounted_tracks(mounted.mountpoint).values())
            assert len(paths) == len(files)
            started = time.monotonic()
            assert read_errno(paths[0]) == errno.EIO
            assert time.monotonic() - started < 15
            assert mounted.alive()
    signed = [r for r in tls_requests if "Authorization" in r["headers"]]
    assert signed, "nothing signed reached the HTTPS endpoint: the check proved nothing"
    assert any(r["headers"].get("X-Amz-Security-Token") == creds["AWS_SESSION_TOKEN"] for r in signed)
    assert plain_requests == [], f"requests followed the redirect to plain HTTP: {plain_requests[:2]}"
