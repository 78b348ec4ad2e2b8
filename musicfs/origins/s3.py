"""The S3 origin: a bucket (and a key prefix in it) on AWS S3 or an S3-compatible service.

Tested against moto; written for AWS S3, MinIO and Backblaze B2's S3 endpoint.
Choices, and why:

* Credentials come from where every AWS tool looks (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; the shared credentials
  file and its profiles; instance roles), or from an AWS-style credentials
  file named by ``credentials_file`` + ``profile``, never from the musicfs
  config: a config file gets copied, shared and pasted into bug reports.
  Naming a ``credentials_file`` makes that file the source (the environment's
  keys are then ignored), so what a mount authenticates with is unambiguous.
  Nobody can change a running daemon's environment, so keys that rotate
  belong in a file (or in a profile botocore refreshes by itself: an assumed
  role, ``credential_process``, SSO).
* Secrets never reach a log, an exception or ``repr``: every botocore error
  is turned into a message built here (operation, bucket, key, HTTP status,
  error code) and raised ``from None``; botocore's own DEBUG logging, which
  prints request headers (session tokens among them), is capped at INFO.
* No retries here (botocore's are switched off too): :mod:`musicfs.origins.retry`
  retries on its backoff schedule and honours ``Retry-After``, carried by
  :class:`~musicfs.origins.base.OriginBusy` for 429/503.
* Credentials that expire are renewed in the background a sixth of their
  lifetime before they do (:mod:`musicfs.origins.s3creds`), so no request
  meets an expired key. Refused credentials (expired anyway, rotated,
  deleted) make the origin rebuild its client from the environment or file,
  then fail that one call, so the caller's retry signs with the new keys. Open files hold no connection state
  (each read is a ranged GET with whatever client is current), so they carry
  on; requests already in flight finish on the old client, which is not
  closed under them.
* Path-style addressing when an endpoint is given: MinIO, B2 and moto all
  accept it, and it needs no wildcard DNS for the bucket name.
* A version is the ETag; mtimes are whole seconds, because a listing gives
  milliseconds but HEAD's ``Last-Modified`` only seconds, and both must agree.
* A read has ``timeout`` seconds as a whole, not only per wait on the socket
  (see :class:`RangedBody`): a body that trickles in must not hold a worker thread
  and a connection for minutes after the reader has given up on it.
* The endpoint's host name must resolve within 1.5 s (:mod:`musicfs.origins.resolve`)
  before a request is sent: a resolver that does not answer would otherwise
  hold every request for the C library's 10 s and more, which no timeout of
  botocore's covers.
* An answer that is not the object is an error, not data: a ranged GET
  answered 200 with a web page (a captive portal's "Please Login", a proxy's
  error page) instead of 206 with the range would otherwise read as a file
  that ends after a few hundred bytes.
* Writes (:meth:`S3Origin.put`) are boto3's managed uploads with this client:
  one PUT up to :data:`PART_SIZE`, a multipart upload beyond, its parts read
  from the source as the upload goes (:data:`PARTS_IN_MEMORY` held at once).
  An object appears whole when its PUT or its multipart upload completes,
  never before; a multipart upload that fails is aborted, so no parts are left
  to pay for (if the abort itself cannot reach the bucket, a lifecycle rule
  that aborts incomplete uploads after a day is the bucket's own safety net).
"""

from __future__ import annotations

import calendar
import contextlib
import email.utils
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from ..errors import ConfigError, NotFound, OriginUnavailable
from .base import Checksum, Entry, Origin, OriginBusy, Page, check_seconds, register
from .resolve import NameCheck, needs_lookup
from .s3body import RangedBody
from .s3creds import CredentialRenewer, session_credentials
from .writes import file_name, reading

log = logging.getLogger(__name__)

__all__ = ["S3Origin"]

DEFAULT_TIMEOUT = 10.0  # seconds: for connecting, for each wait on the socket, and for a whole read
DEFAULT_PAGE_SIZE = 1000  # S3 returns at most 1000 keys per listing
DEFAULT_REGION = "us-east-1"  # what MinIO and moto expect when nothing else is said
# kept-alive connections: as many as the store reader lets run at once (its origin_threads);
# botocore's default of 10 would drop and reopen connections under parallel FUSE reads
MAX_POOL_CONNECTIONS = 128
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
PART_SIZE = 8 * 1024 * 1024  # a put up to this is one PUT; beyond, parts of this size (S3's least: 5 MiB)
# parts read and not yet uploaded, at most (and as many uploading at once); with the part being
# read, a put holds about (PARTS_IN_MEMORY + 1) * PART_SIZE = 24 MiB, however large it is
PARTS_IN_MEMORY = 2
_TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                           max_concurrency=PARTS_IN_MEMORY,
                           preferred_transfer_client="classic")  # not the CRT client: this one, its errors
_TRANSFER.max_in_memory_upload_chunks = PARTS_IN_MEMORY  # s3transfer's own setting (boto3's __init__ lacks it)
_WRITES = frozenset({"PutObject", "DeleteObject"})  # operations that change the bucket

# Codes that mean "these credentials are no good (any more)": reload them before the next attempt.
# (B2 says "expired_auth_token" or "bad_auth_token", with HTTP 401)
_CREDENTIAL_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "InvalidClientTokenId",
    "InvalidToken", "SignatureDoesNotMatch", "TokenRefreshRequired", "expired_auth_token",
    "bad_auth_token",
})
_BUSY_CODES = frozenset({"SlowDown", "TooManyRequests", "Throttling", "ThrottlingException",
                         "RequestLimitExceeded", "ServiceUnavailable"})
_HINTS = {
    "AccessDenied": "the credentials may not read this bucket or prefix",
    "AllAccessDisabled": "access to this bucket is disabled",
    "AuthorizationHeaderMalformed": "check the region",
    "PermanentRedirect": "the bucket is in another region or needs another endpoint",
    "InvalidBucketName": "check the bucket name",
    "RequestTimeTooSkewed": "this machine's clock is off",
}
_WRITE_HINTS = {"AccessDenied": "permission denied: the credentials may not write to this bucket or prefix"}
_SECRET_OPTIONS = ("access_key", "access_key_id", "aws_access_key_id", "secret", "secret_key",
                   "secret_access_key", "aws_secret_access_key", "session_token", "aws_session_token",
                   "password", "key_id", "application_key")


def _quiet_botocore() -> None:
    """botocore logs whole request headers at DEBUG (session tokens included): keep it at INFO or above."""
    for name in ("botocore", "boto3", "s3transfer"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET (inherits root) or DEBUG
            logger.setLevel(logging.INFO)


_quiet_botocore()


def _mtime_ns(value: datetime) -> int:
    return calendar.timegm(value.utctimetuple()) * 1_000_000_000


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


def _retry_after(headers: dict[str, str]) -> float | None:
    """``Retry-After`` in seconds, from either form HTTP allows (delta-seconds or a date)."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@register
class S3Origin(Origin):
    """Objects under ``prefix`` in ``bucket``; a key's '/'-separated parts are the folders."""

    kind = "s3"
    required = frozenset({"bucket"})
    optional = frozenset({"endpoint", "prefix", "region", "credentials_file", "profile", "page_size",
                          "timeout", "verify_etag"})
    writable = True

    def __init__(self, origin_id: str, *, bucket: str, endpoint: str | None = None, prefix: str = "",
                 region: str | None = None, credentials_file: str | None = None,
                 profile: str | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                 timeout: float = DEFAULT_TIMEOUT, verify_etag: bool = True):
        super().__init__(origin_id)
        self.verify_etag = verify_etag  # check whole objects against their ETag (off for SSE-KMS/SSE-C)
        self.bucket, self.endpoint, self.region = bucket, endpoint, region
        self.prefix = "/".join(part for part in prefix.split("/") if part)
        self.prefix += "/" if self.prefix else ""
        self.credentials_file = os.path.expanduser(credentials_file) if credentials_file else None
        # an explicit file is read with an explicit profile, which also turns off the environment's keys
        self.profile = profile or ("default" if credentials_file else None)
        self.page_size, self.timeout = page_size, float(timeout)
        self.credential_reloads = 0  # how often refused credentials were reloaded (for status and tests)
        self.list_requests = 0  # ListObjectsV2 pages asked for (listing and caching tests count them)
        if self.credentials_file and not os.path.isfile(self.credentials_file):
            raise self._config_error(f"credentials_file {self.credentials_file} does not exist")
        self._lock = threading.Lock()
        self._renewer = CredentialRenewer(f"s3 origin {origin_id!r}", self._renew_credentials)
        self._loader = None  # botocore's data loader, kept from the first client for the next ones
        try:
            self._client = self._build_client()
        except BotoCoreError as exc:
            raise self._config_error(self._setup_problem(exc)) from None
        self._names = self._name_check(self._client.meta.endpoint_url)

    @classmethod
    def from_options(cls, origin_id: str, options: dict[str, Any]) -> S3Origin:
        """Check the config's options (types and ranges) before anything is contacted."""
        def fail(message: str) -> ConfigError:
            return ConfigError(f"s3 origin {origin_id!r}: {message}")

        secrets = sorted(k for k in options if k.lower() in _SECRET_OPTIONS)
        if secrets:  # name the key, never echo its value
            raise fail(f"{', '.join(secrets)}: credentials are not read from the musicfs config; set "
                       f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name an "
                       f"AWS-style file with credentials_file (and profile)")
        unknown = set(options) - cls.required - cls.optional
        if unknown:
            raise fail(f"unknown option(s) {', '.join(sorted(unknown))} "
                       f"(known: {', '.join(sorted(cls.required | cls.optional))})")
        if "bucket" not in options:
            raise fail("needs 'bucket'")
        for key in ("bucket", "endpoint", "prefix", "region", "credentials_file", "profile"):
            if key in options and not isinstance(options[key], str):
                raise fail(f"{key} must be a string, not {type(options[key]).__name__}")
        for key in ("bucket", "endpoint", "region", "credentials_file", "profile"):
            if key in options and not options[key].strip():
                raise fail(f"{key} must not be empty")
        bucket = options["bucket"]
        if "/" in bucket or any(c.isspace() for c in bucket):
            raise fail(f"bucket must be a bare bucket name (no '/' or spaces), not {bucket!r}; "
                       f"put a folder inside it in 'prefix'")
        if "endpoint" in options:
            problem = _endpoint_problem(options["endpoint"])
            if problem:
                raise fail(f"endpoint {problem}")
        if any(part in (".", "..") for part in options.get("prefix", "").split("/")):
            raise fail("prefix must not hold '.' or '..' parts")
        if "page_size" in options:
            value = options["page_size"]
            if not isinstance(value, int) or isinstance(value, bool):
                raise fail(f"page_size must be an integer, not {type(value).__name__}")
            if not 1 <= value <= DEFAULT_PAGE_SIZE:
                raise fail(f"page_size must be between 1 and {DEFAULT_PAGE_SIZE}, not {value}")
        check_seconds(options, "timeout", fail)
        if "verify_etag" in options and not isinstance(options["verify_etag"], bool):
            raise fail(f"verify_etag must be true or false, not {options['verify_etag']!r}")
        return cls(origin_id, **options)

    def __repr__(self) -> str:
        return f"S3Origin({self.id!r}, {self.location!r})"

    @property
    def location(self) -> str:
        where = self.endpoint or f"AWS {self.client.meta.region_name}"
        return f"s3://{self.bucket}/{self.prefix} @ {where}"

    @property
    def client(self):
        """The boto3 client now in use (replaced when refused credentials are reloaded)."""
        return self._client

    # -- the origin interface ------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        key = self._key(path)
        try:
            with self._request("HeadObject", key) as client:
                head = client.head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            self.health()  # a HEAD's 404 has no body: a missing bucket looks just like a missing key
            raise
        return Entry(path, head["ContentLength"], _mtime_ns(head["LastModified"]), _etag(head.get("ETag")))

    def list_page(self, prefix: str = "", token: str | None = None) -> Page:
        """Files and folders directly under ``prefix``: one ListObjectsV2 page with delimiter '/'.

        Folder markers (zero-byte keys ending in '/', made by web consoles) and
        keys whose names would not be a path (empty, '.', '..') are skipped.
        """
        base = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
        full = self.prefix + base
        args = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/", "MaxKeys": self.page_size}
        if token:
            args["ContinuationToken"] = token
        with self._request("ListObjectsV2", full) as client:
            self.list_requests += 1
            response = client.list_objects_v2(**args)
        files = []
        for obj in response.get("Contents", ()):
            name = obj["Key"][len(full):]
            if name and name not in (".", ".."):
                files.append(Entry(base + name, obj["Size"], _mtime_ns(obj["LastModified"]),
                                   _etag(obj.get("ETag"))))
        dirs = [p["Prefix"][len(full):-1] for p in response.get("CommonPrefixes", ())]
        dirs = [name for name in dirs if name and name not in (".", "..")]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return Page(files, dirs, next_token)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` with one ranged GET, read as a stream and never past ``size``.

        Exactly the bytes asked for, fewer only where the object ends, or an
        error: a body cut short, a connection reset or a read past ``timeout``
        (for the whole call: see :class:`RangedBody`) raise :class:`OriginUnavailable`,
        and the connection is closed rather than returned half-read to the pool.
        """
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size: {offset}, {size}")
        key = self._key(path)
        if size == 0:
            return b""
        deadline = time.monotonic() + self.timeout
        with self._request("GetObject", key) as client:
            try:
                response = client.get_object(Bucket=self.bucket, Key=key,
                                             Range=f"bytes={offset}-{offset + size - 1}")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange" or _status(exc) == 416:
                    return b""  # at or past the end (or an empty object)
                raise
            body = RangedBody(response, deadline, self.timeout, self._what("GetObject", key))
            try:
                if not body.start_at(offset):
                    return b""  # a whole-object answer that ends before offset
                return body.read(size)
            finally:
                body.close()

    def health(self) -> None:
        """The bucket lists the origin's prefix for these credentials (a one-key listing).

        A listing rather than HeadBucket: it needs exactly the permission the
        origin needs (keys limited to a prefix pass), and its errors carry a
        code, where a HEAD answers a bare status.
        """
        with self._request("ListObjectsV2", None) as client:
            client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def put(self, path: str, source: BinaryIO) -> None:
        """Upload ``source`` as the object ``prefix + path``: a PUT, or a multipart upload in parts
        of :data:`PART_SIZE` (aborted if anything fails). See :meth:`Origin.put` for the guarantees."""
        key = self._key(path)
        file_name(path)  # a key ending in '/' is a folder marker, not a file
        with reading(source, self._what("PutObject", key)) as taken, \
                self._request("PutObject", key) as client:
            client.upload_fileobj(taken, self.bucket, key, Config=_TRANSFER)

    def remove(self, path: str) -> None:
        """DeleteObject: S3 answers the same whether the key was there or not."""
        key = self._key(path)
        file_name(path)
        with self._request("DeleteObject", key) as client:
            client.delete_object(Bucket=self.bucket, Key=key)

    def whole_checksum(self, version: str) -> Checksum | None:
        """The ETag of an object uploaded in one part is the MD5 of its body (AWS, B2, MinIO).

        A multipart upload's ETag ("<md5 of part md5s>-<parts>") and an object
        encrypted with SSE-KMS or SSE-C have ETags that are not the body's MD5:
        the first is recognised by its form and left unchecked; the second
        needs ``verify_etag = false``.
        """
        if self.verify_etag and _MD5.match(version):
            return Checksum("md5", version.lower(), "ETag")
        return None

    def statistics(self) -> dict:
        return {"credential_reloads": self.credential_reloads, "credential_renewals": self._renewer.renewals,
                "credentials_expire_at": self._renewer.expires,  # epoch seconds; None: keys that do not expire
                "list_requests": self.list_requests}

    def close(self) -> None:
        self._renewer.close()
        with self._lock:
            client = self._client
        client.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _key(self, path: str) -> str:
        """The object key of ``path``; '.' and '..' parts are refused (a proxy could resolve them)."""
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in (".", "..") for p in parts):
            raise ValueError(f"not a path inside the origin: {path!r}")
        return self.prefix + path

    def _name_check(self, url: str) -> NameCheck | None:
        """A bounded lookup of the endpoint's host before each request (none for an IP, or via a proxy)."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host or not needs_lookup(host):
            return None
        if getproxies().get(parts.scheme) and not proxy_bypass(host):
            return None  # the proxy resolves the name
        return NameCheck(host, parts.port or (443 if parts.scheme == "https" else 80),
                         f"s3 origin {self.id!r}")

    def _config_error(self, message: str) -> ConfigError:
        return ConfigError(f"s3 origin {self.id!r}: {message}")

    def _build_client(self):
        """A client from a fresh session, which reads the environment or credentials file anew; it
        signs with the credentials found now, frozen, and the renewer learns when they expire."""
        issued = time.time()
        core = botocore.session.Session()
        if self._loader is not None:  # the service models, parsed once: a renewal takes milliseconds
            core.register_component("data_loader", self._loader)
        if self.credentials_file:
            core.set_config_variable("credentials_file", self.credentials_file)
        if self.profile:
            core.set_config_variable("profile", self.profile)
        session = boto3.Session(botocore_session=core)
        region = self.region or session.region_name or DEFAULT_REGION
        options: dict[str, Any] = {
            "region_name": region, "signature_version": "s3v4",
            "connect_timeout": self.timeout, "read_timeout": self.timeout,
            "retries": {"total_max_attempts": 1, "mode": "standard"},  # musicfs retries, not botocore
            "max_pool_connections": MAX_POOL_CONNECTIONS,
            "s3": {"addressing_style": "path" if self.endpoint else "auto"},
        }
        # newer botocore asks for checksums some S3-compatible servers do not know; reads need none
        for name in ("request_checksum_calculation", "response_checksum_validation"):
            if name in Config.OPTION_DEFAULTS:
                options[name] = "when_required"
        credentials, expires = session_credentials(core)
        keys = {} if credentials is None else {
            "aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key,
            "aws_session_token": credentials.token}
        client = session.client("s3", endpoint_url=self.endpoint, config=Config(**options), **keys)
        self._loader = core.get_component("data_loader")
        self._renewer.schedule(issued, expires)
        return client

    def _renew_credentials(self) -> None:
        """Credentials about to expire: a new client for the next requests (those in flight finish)."""
        client = self._build_client()
        with self._lock:
            self._client = client

    def _reload_credentials(self, stale) -> None:
        """Rebuild the client after ``stale`` had its credentials refused (once, however many saw it)."""
        with self._lock:
            if self._client is not stale:
                return  # another thread already reloaded
            try:
                self._client = self._build_client()
            except BotoCoreError as exc:
                log.warning("s3 origin %r: reloading credentials failed: %s", self.id,
                            self._setup_problem(exc))
                return
            self.credential_reloads += 1
        log.info("s3 origin %r: credentials were refused; reloaded them for the next attempt", self.id)

    def _setup_problem(self, exc: BotoCoreError) -> str:
        source = (f"profile {self.profile!r} of {self.credentials_file or 'the AWS config'}"
                  if self.profile else "the AWS environment")
        return f"cannot set up the S3 client from {source} ({type(exc).__name__})"

    def _what(self, operation: str, key: str | None) -> str:
        target = f"s3://{self.bucket}/{key}" if key is not None else f"bucket {self.bucket!r}"
        return f"s3 origin {self.id!r}: {operation} {target}"

    @contextlib.contextmanager
    def _request(self, operation: str, key: str | None) -> Iterator[Any]:
        """Run one request with the current client; turn whatever botocore raises into our errors."""
        if self._names is not None:
            self._names.check()  # fails within seconds if the endpoint's name does not resolve
        client = self._client
        try:
            yield client
        except ClientError as exc:
            raise self._client_error(exc, operation, key, client) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            self._reload_credentials(client)
            raise OriginUnavailable(
                f"{self._what(operation, key)}: no usable credentials ({type(exc).__name__}); set "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or credentials_file") from None
        except ParamValidationError:
            raise ValueError(f"{self._what(operation, key)}: botocore refused the request's "
                             f"parameters") from None
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise OriginUnavailable(f"{self._what(operation, key)}: no answer from "
                                    f"{self.endpoint or 'AWS'} within {self.timeout:g} s "
                                    f"({type(exc).__name__})") from None
        except BotoCoreError as exc:  # connection refused or reset, cut-off answers
            raise OriginUnavailable(f"{self._what(operation, key)}: {type(exc).__name__} "
                                    f"talking to {self.endpoint or 'AWS'}") from None
        except RecursionError:  # botocore's region redirector follows an endpoint's redirects without end
            raise OriginUnavailable(f"{self._what(operation, key)}: {self.endpoint or 'AWS'} answers with "
                                    f"redirects (check the endpoint URL and region)") from None

    def _client_error(self, exc: ClientError, operation: str, key: str | None, client) -> Exception:
        error = exc.response.get("Error", {})
        code, status = str(error.get("Code", "")), _status(exc)
        bare = code in ("", str(status))  # a HEAD response has no body, so no error code
        what = f"{self._what(operation, key)}: HTTP {status}{'' if bare else f' {code}'}"
        writing = operation in _WRITES
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound"):
            if code == "NoSuchBucket" or key is None:
                return OriginUnavailable(f"{what}: bucket {self.bucket!r} does not exist")
            if not writing:  # a write's 404 (an upload aborted meanwhile) is no missing file
                return NotFound(key[len(self.prefix):])
        if status in (429, 503) or code in _BUSY_CODES:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return OriginBusy(f"{what}: the server asks to slow down", _retry_after(headers))
        message = str(error.get("Message", ""))
        if code in _CREDENTIAL_CODES or (status in (400, 401, 403) and "expired" in message.lower()):
            self._reload_credentials(client)
            return OriginUnavailable(f"{what}: credentials refused; reloaded for the next attempt")
        if status == 403 and bare:  # expired keys or no permission: a HEAD cannot say which
            self._reload_credentials(client)
            return OriginUnavailable(f"{what}: credentials refused or not allowed; reloaded them "
                                     f"for the next attempt")
        if status >= 500:
            return OriginUnavailable(f"{what}: server error")
        hint = _WRITE_HINTS.get(code) if writing else None
        hint = hint or _HINTS.get(code)
        return OriginUnavailable(f"{what}{f': {hint}' if hint else ''}")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _endpoint_problem(url: str) -> str | None:
    """What is wrong with an endpoint URL, in words that do not repeat any password in it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host name"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password (credentials come from the environment)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be just scheme://host[:port] (path-style bucket URLs are built from 'bucket')"
    return None
