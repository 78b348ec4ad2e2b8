"""Fixtures shared by every suite: the generated sample library and real mounts.

Mounts run ``musicfs mount --foreground`` in a child process (the test process
must never serve the filesystem it pokes at) and are always torn down: SIGTERM,
then a lazy unmount, then aborting the FUSE connection if the daemon hangs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from fixtures.generate import generate_library
from tests.harness import MountedLibrary, mount_library

# Hypothesis's explain phase traces every example with sys.settrace to say which branches a
# failure took; on Python 3.11 that makes examples that drive a mount or an HTTP client many
# times slower (a fuzz of the control API spun for minutes in it). A failure still shrinks to
# its smallest example and prints it; only the branch commentary is left out.
settings.register_profile("musicfs", phases=[phase for phase in Phase if phase is not Phase.explain])
settings.load_profile("musicfs")


@pytest.fixture(scope="session")
def sample_library(tmp_path_factory) -> tuple[Path, dict]:
    """The ci-size generated library: (library folder, manifest)."""
    out = tmp_path_factory.mktemp("sample")
    manifest = generate_library(out, size="ci", seed=1234)
    return out / "library", manifest


@pytest.fixture(scope="session")
def good_files(sample_library) -> list[dict]:
    return [f for f in sample_library[1]["files"] if not f["broken"]]


@pytest.fixture(scope="session")
def broken_files(sample_library) -> list[dict]:
    return [f for f in sample_library[1]["files"] if f["broken"]]


@pytest.fixture(scope="session")
def sample_mount(sample_library, tmp_path_factory) -> MountedLibrary:
    """The sample library mounted once for the whole session (read-only tests share it)."""
    work = tmp_path_factory.mktemp("mount")
    with mount_library(origin=sample_library[0], work=work) as mounted:
        yield mounted


@pytest.fixture
def mount_factory(tmp_path):
    """Mount libraries of a test's own; every mount made is unmounted at the end."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        def make(**kwargs) -> MountedLibrary:
            kwargs.setdefault("work", tmp_path / f"m{len(stack._exit_callbacks)}")
            return stack.enter_context(mount_library(**kwargs))
        yield make


# Chaos and perf tests time what they check (stalls, fault windows, speeds) or load the machine
# on purpose: all of them need it to themselves (spec.plugin's ``alone`` mark). Conformance
# tests that do are marked one by one.
ALONE_SUITES = ("chaos", "perf")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(item.path)
        if path.is_relative_to(config.rootpath) and path.relative_to(config.rootpath).parts[0] in ALONE_SUITES:
            item.add_marker(pytest.mark.alone)


def pytest_report_header(config):
    return "musicfs: real FUSE mounts under the test's temporary directory"


__all__ = ["json"]
