"""The command line: ``musicfs scan`` summaries, ``musicfs-inspect`` views, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def scanned_state(sample_library, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    result = run("musicfs.cli.main", "--state-dir", str(state), "scan", "--origin", str(sample_library[0]))
    return state, result


@pytest.mark.req("NFR-7.4", "FS-10")
def test_scan_prints_a_summary_with_skipped_reasons(scanned_state, good_files, broken_files):
    _, result = scanned_state
    out = result.stdout
    assert "indexed (new)" in out and str(len(good_files)) in out
    assert "skipped files" in out
    for entry in broken_files:
        assert entry["path"].split("/")[-1] in out
    assert "empty file" in out and "corrupt audio" in out


@pytest.mark.req("FS-10")
def test_inspect_index_and_skipped_json(scanned_state, sample_library, good_files, broken_files):
    state, _ = scanned_state
    common = ("--state-dir", str(state))
    stats = json.loads(run("musicfs.cli.inspect", *common, "index", "--origin", str(sample_library[0]),
                           "--json").stdout)
    assert stats["tracks"] == len(good_files) and stats["skipped"] == len(broken_files)
    assert stats["files"] == len(good_files)
    skipped = json.loads(run("musicfs.cli.inspect", *common, "skipped", "--origin", str(sample_library[0]),
                             "--json").stdout)
    assert {s["real_path"] for s in skipped} == {f["path"] for f in broken_files}


@pytest.mark.req("FS-10", "FS-1")
def test_inspect_tree_shows_the_virtual_tree(scanned_state, sample_library, good_files):
    state, _ = scanned_state
    tree = json.loads(run("musicfs.cli.inspect", "--state-dir", str(state), "tree", "--origin",
                          str(sample_library[0]), "--json", "--depth", "9").stdout)

    def files(node):
        if node["kind"] == "file":
            return 1
        return sum(files(child) for child in node.get("children", []))

    assert tree["id"] == 1 and files(tree) == len(good_files)
    text = run("musicfs.cli.inspect", "--state-dir", str(state), "tree", "--origin", str(sample_library[0]),
               "--depth", "1").stdout
    assert "Various Artists" in text or "Unknown Artist" in text


@pytest.mark.req("FS-8")
def test_bad_config_is_rejected_with_line_and_reason(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[library]\ntemplate = "$artist/$nonsense"\n\n[[origins]]\nid = "x"\ntype = "local"\n'
                      f'path = "{tmp_path}"\n')
    result = run("musicfs.cli.main", "--state-dir", str(tmp_path), "scan", "--config", str(config), check=False)
    assert result.returncode == 2
    assert "bad.toml:2:" in result.stderr and "$nonsense" in result.stderr


def test_missing_origin_folder_is_a_clear_error(tmp_path):
    result = run("musicfs.cli.main", "--state-dir", str(tmp_path), "scan", "--origin", str(tmp_path / "nope"),
                 check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_a_health_probe_failing_unexpectedly_counts_as_unreachable_and_is_logged(caplog):
    """A mount goes ahead on its cache whatever an origin's probe raises; a bug is logged in full."""
    import logging

    from musicfs.cli.main import probe
    from musicfs.errors import OriginUnavailable

    class Origin:
        id = "b2"

        def __init__(self, error):
            self.error = error

        def health(self):
            if self.error:
                raise self.error

    with caplog.at_level(logging.ERROR):
        assert probe(Origin(None)) is None
        assert probe(Origin(OriginUnavailable("no answer within 5 s"))) == "no answer within 5 s"
        assert not caplog.records
        assert probe(Origin(RecursionError("redirected forever"))) == "unexpected RecursionError"
    (record,) = caplog.records
    assert record.exc_info is not None and "b2" in record.getMessage()


@pytest.mark.req("FAULT-27")
def test_locks_are_taken_all_or_none(tmp_path):
    from musicfs import daemon
    from musicfs.cli.main import _acquire

    held = daemon.Lock(tmp_path / "cache.lock", "cache")
    held.acquire()
    try:
        index, cache = daemon.Lock(tmp_path / "index.lock", "index"), daemon.Lock(tmp_path / "cache.lock", "cache")
        with pytest.raises(daemon.DaemonError, match="cache is already in use by musicfs pid"):
            _acquire([index, cache])
        again = daemon.Lock(tmp_path / "index.lock", "index")
        again.acquire()  # the index lock was given back when the cache lock was refused
        again.release()
    finally:
        held.release()
