"""A throwaway OpenSSH server on loopback, for testing the SFTP origin against the real thing.

Why the real ``sshd`` and not a Python server: the origin must work with what
people actually run (OpenSSH's ``internal-sftp``, its host key and key
exchange choices, its way of answering for missing files and dropped
sessions). Everything lives in one temp dir: host key, client keys,
``authorized_keys``, ``known_hosts``, config, pid file and log, so a run
touches nothing of the machine's own ssh setup.

``sshd`` forks one process per connection and those call ``setsid``, so
killing a process group does not reach them. Stopping therefore kills the
listener's whole process tree, read from ``/proc``, leaves first, then the
listener; only processes this fixture started are ever signalled.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import die_with_parent

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")  # sshd must be run by absolute path
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
START_TIMEOUT = 10.0


@dataclass
class SshServer:
    """A running ``sshd``: where it listens, who may log in, and with which files."""

    host: str
    port: int
    user: str
    key_file: Path  # the client's private key (ed25519), authorized for ``user``
    known_hosts: Path  # holds the server's host key for [host]:port
    root: Path  # an empty folder to serve files from
    rsa_key_file: Path  # a second authorized client key, RSA
    other_key_file: Path  # a valid key that is NOT authorized
    dir: Path  # the temp dir holding everything above
    log: Path  # sshd's own log (its stderr)
    proc: subprocess.Popen = field(repr=False)

    def options(self, **overrides) -> dict:
        """Origin options for this server (``path`` defaults to :attr:`root`)."""
        options = {"host": self.host, "port": self.port, "user": self.user,
                   "key_file": str(self.key_file), "known_hosts": str(self.known_hosts),
                   "path": str(self.root), "timeout": 5.0}
        options.update(overrides)
        return options

    def options_via(self, address: str, work: Path, **overrides) -> dict:
        """Origin options for reaching this server through a proxy at ``address`` ("host:port").

        sshd's host key is recorded for its own port; the proxy's port gets a known_hosts
        file of its own (in ``work``), so the origin still verifies the key it is shown.
        """
        host, port = address.rsplit(":", 1)
        key_type, key = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        known_hosts = work / f"known_hosts-{port}"
        known_hosts.write_text(f"[{host}]:{port} {key_type} {key}\n")
        return self.options(host=host, port=int(port), known_hosts=str(known_hosts), **overrides)

    def sessions(self) -> list[int]:
        """Pids of the per-connection processes sshd has forked (its descendants)."""
        return _descendants(self.proc.pid) if self.proc.poll() is None else []

    def drop_connections(self) -> int:
        """Kill every client connection on the server side, as a network drop would; sshd keeps listening."""
        return _kill_tree(self.proc.pid) if self.proc.poll() is None else 0

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP sshd and its sessions: a hung server (the kernel still accepts TCP, nothing answers)."""
        pids = [self.proc.pid, *self.sessions()]
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                _signal(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill sshd and every process it forked; safe to call twice."""
        if self.proc.poll() is None:
            _kill_tree(self.proc.pid)
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # cannot happen after SIGKILL unless the kernel is stuck
            raise RuntimeError(f"sshd (pid {self.proc.pid}) did not exit after SIGKILL") from None

    def connections(self) -> int:
        """Client connections open now: sshd forks one process per connection, a direct child."""
        if self.proc.poll() is not None:
            return 0
        return sum(1 for pid in _children_map().get(self.proc.pid, []) if _alive(pid))


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # the process exited while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and ')'
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    children, found, stack = children if children is not None else _children_map(), [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _kill_tree(pid: int) -> int:
    """SIGKILL every descendant of ``pid``, leaves first; return how many were killed.

    Leaves first, so each dead process is reaped by its parent, which is still
    running (an sshd monitor, or the listener itself), and none is left behind
    as a zombie for init.
    """
    killed, deadline = 0, time.monotonic() + 10
    while True:
        children = _children_map()
        tree = [p for p in _descendants(pid, children) if _alive(p)]
        if not tree:
            return killed
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd processes {tree} survived SIGKILL")
        leaves = [p for p in tree if not any(_alive(c) for c in children.get(p, []))]
        for leaf in leaves:
            _signal(leaf, signal.SIGKILL)
        killed += len(leaves)
        until = time.monotonic() + 1
        while time.monotonic() < until and any(_alive(p) for p in leaves):
            time.sleep(0.005)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; our own child stays a zombie until waited for, which counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False



def _sshd() -> str:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("OpenSSH's sshd is not installed (apt-get install openssh-server, or `make setup`)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path, kind: str) -> None:
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "musicfs-test", "-f", str(path)]
    if kind == "rsa":
        args[4:4] = ["-b", "2048"]
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def _sshd_config(tmp: Path, port: int, sftp_options: str = "", extra: Sequence[str] = ()) -> str:
    return "\n".join([
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {tmp / 'ssh_host_ed25519_key'}",
        f"PidFile {tmp / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "StrictModes no",  # the temp dir's owner and modes are not a home directory's
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        f"Subsystem sftp internal-sftp {sftp_options}".rstrip(),
        "MaxStartups 50",
        "LogLevel VERBOSE",
        *extra,
        "",
    ])


def _wait_for_banner(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Until sshd answers with its banner: listening is not enough, it must be serving."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not answer on port {port} within {START_TIMEOUT} s:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


@contextmanager
def ssh_server(sftp_options: str = "", extra: Sequence[str] = ()) -> Iterator[SshServer]:
    """Start ``sshd`` on 127.0.0.1 and a free port; yield it; always stop it and remove its files.

    ``sftp_options`` are given to ``internal-sftp`` (``-R``: a server that lets files be read only);
    ``extra`` lines go at the end of ``sshd_config`` (``Ciphers aes128-ctr``: an older server).
    """
    sshd = _sshd()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    tmp = Path(tempfile.mkdtemp(prefix="musicfs-sshd-"))
    server = None
    try:
        _keygen(tmp / "ssh_host_ed25519_key", "ed25519")
        for name, kind in (("client_ed25519", "ed25519"), ("client_rsa", "rsa"), ("stranger", "ed25519")):
            _keygen(tmp / name, kind)
        authorized = [(tmp / f"{name}.pub").read_text() for name in ("client_ed25519", "client_rsa")]
        (tmp / "authorized_keys").write_text("".join(authorized))
        (tmp / "root").mkdir()
        host_key = (tmp / "ssh_host_ed25519_key.pub").read_text().split()
        log = tmp / "sshd.log"
        for _ in range(3):  # the free port can be taken between probing and binding
            port = _free_port()
            (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
            (tmp / "sshd_config").write_text(_sshd_config(tmp, port, sftp_options, extra))
            with open(log, "ab") as out:
                proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(tmp / "sshd_config")],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        preexec_fn=die_with_parent)
            server = SshServer("127.0.0.1", port, user, tmp / "client_ed25519", tmp / "known_hosts",
                               tmp / "root", tmp / "client_rsa", tmp / "stranger", tmp, log, proc)
            try:
                _wait_for_banner(proc, port, log)
                break
            except RuntimeError:
                server.stop()
                if "Address already in use" not in log.read_text(errors="replace"):
                    raise
        else:
            raise RuntimeError("sshd could not bind a free port three times")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
