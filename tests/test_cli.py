"""The command line: ``musicfs scan`` summaries, ``musicfs-inspect`` views, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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


# -- the control commands' rendering (their behaviour on a real mount: conformance/test_control_cli.py)


def shown(renderable) -> str:
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_sizes_rates_and_durations_print_in_human_units():
    from musicfs.cli import render

    assert render.size(3_400_000_000) == "3.4 GB" and render.size(10 * 10**9) == "10.0 GB"
    assert render.size(43_286) == "43.3 kB" and render.size(None) == "-"
    assert [render.duration(s) for s in (0.0044, 0.25, 2.1, 200, 7500, 200_000)] == \
        ["4.4 ms", "0.25 s", "2.1 s", "3 min 20 s", "2 h 05 min", "2 d 7 h"]
    assert render.percent(0.9344) == "93.4 %" and render.percent(None) == "-"
    assert render.ago(None) == "never" and render.ago(100.0, now=112.0) == "12.0 s ago"


def test_the_cache_table_and_a_clear_say_what_the_api_said_in_human_units():
    from musicfs.cli import render

    stats = {"bytes": 3_400_000_000, "limit_bytes": 10 * 10**9, "manifests": 812, "partial_manifests": 3,
             "chunks": 9000, "hits": 934, "misses": 66, "hit_rate": 0.934, "logical_bytes": 3_600_000_000,
             "dedup_ratio": 0.05556, "evictions": 12, "evicted_bytes": 48_000_000, "corruptions": 0,
             "writable": True, "directory": "/var/cache/musicfs", "manifests_delta": 5, "reused_bytes": 150_000_000}
    text = shown(render.cache_table({**stats, "tiers": {"chunks": stats}}))
    for expected in ("3.4 GB", "10.0 GB", "812 (3 in part)", "93.4 %", "200.0 MB (5.6 %)", "12 (48.0 MB)",
                     "/var/cache/musicfs", "5 (150.0 MB reused)"):
        assert expected in text, (expected, text)
    assert render.clear_line({"manifests": 2, "chunks": 40, "entries": 42, "bytes": 8_000_000,
                              "bytes_freed": 8_000_000, "dry_run": False, "tier": "chunks"}) == \
        "cleared 2 cached files, 40 chunks (42 entries) from tier chunks: 8.0 MB freed"
    assert render.clear_line({"manifests": 1, "chunks": 4, "entries": 5, "bytes": 1000, "bytes_freed": 0,
                              "dry_run": True}).endswith("1.0 kB (dry run: nothing removed)")


def test_status_origins_and_events_render_without_reading_markup_in_names():
    from musicfs.cli import render

    origin = {"id": "nas", "kind": "local", "location": "/music/[live]", "state": "unhealthy",
              "latency_ms": 2100.0, "error": "no answer within 5 s", "checked_at": 1.0, "tracks": 3,
              "bytes": 2_000_000, "skipped": 1, "last_sync": None, "failed_reads": 2, "failed_attempts": 8}
    report = {"mountpoint": "/mnt/[music]", "pid": 42, "state": "degraded", "version": "1", "uptime_seconds": 7300,
              "open_handles": 1, "fuse_ops_total": 9, "origins": [origin],
              "index": {"path": "/i.db", "tracks": 3, "directories": 2, "bytes": 2_000_000, "skipped": 1,
                        "age_seconds": 61.0},
              "cache": {"bytes": 1000, "limit_bytes": 10**9, "hit_rate": 0.5}}
    assert render.status_heading(report).plain == "/mnt/[music]  (pid 42)"
    deep = "/" + "a-long-folder-name/" * 8 + "mnt"  # longer than the terminal is wide: one line still
    from rich.console import Console

    narrow = Console(record=True, width=40, color_system=None)
    narrow.print(render.status_heading({"mountpoint": deep, "pid": 7}), soft_wrap=True)
    assert f"{deep}  (pid 7)" in narrow.export_text().splitlines()
    text = shown(render.status_table(report))
    for expected in ("degraded", "2 h 01 min", "3 in 2 folders, 2.0 MB", "/music/[live]",
                     "1.0 kB of 1.0 GB, hit rate 50.0 %", "1 min 1 s ago"):
        assert expected in text, (expected, text)
    assert "not answering" in shown(render.status_table({"mountpoint": "/m", "pid": 1, "error": "refused"}))
    health = shown(render.origin_table(origin))
    assert "2.1 s" in health and "no answer within 5 s" in health and "never" in health
    assert "/music/[live]" in shown(render.origins_table([origin]))

    line = render.event_line({"type": "FileAccessed", "at": 1_700_000_000.25, "origin_id": "nas",
                              "path": "a/[b].flac", "size": 43_286}).plain
    assert line.endswith("FileAccessed        nas  a/[b].flac  (size 43.3 kB)"), line
    assert ".250" in line
    assert render.event_line({"type": "dropped", "count": 12}).plain.startswith("… 12 events dropped")
    synced = render.event_line({"type": "SyncCompleted", "at": 1.0, "origin_id": "nas", "added": 1,
                                "removed": 0, "seconds": 2.1}).plain
    assert "(added 1, removed 0, seconds 2.1 s)" in synced


def test_a_command_with_no_daemon_says_so_in_one_line_and_exits_2(tmp_path, capsys):
    from musicfs.cli.main import main

    assert main(["--state-dir", str(tmp_path), "origin", "health", "nas"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "musicfs: no musicfs mount is running\n"
    assert main(["--state-dir", str(tmp_path), "events", "--type", "FileAdded", str(tmp_path / "[m]")]) == 2
    assert capsys.readouterr().err == f"musicfs: no musicfs daemon serves {tmp_path / '[m]'}\n"


@pytest.mark.req("CLI-1")
@pytest.mark.parametrize("thread", [False, True], ids=["alone", "with a thread running"])
def test_a_command_exits_without_teardown_yet_keeps_all_it_printed_and_its_exit_code(thread):
    """``musicfs`` (:func:`musicfs.cli.main.run`) skips the interpreter's teardown once a command
    is done: a megabyte written to a pipe still arrives whole, stderr too, logging's handlers
    are flushed, and the exit code is the command's. A command that leaves a thread running
    exits the normal way, which waits for the thread (its output arrives too)."""
    script = textwrap.dedent(f"""
        import logging, sys, threading, time
        from musicfs.cli import main as cli

        def command():
            sys.stdout.write("x" * 1_000_000)
            sys.stderr.write("to stderr")
            logging.getLogger("musicfs.test").warning("logged")
            if {thread}:
                threading.Thread(target=lambda: (time.sleep(0.2), sys.stdout.write("late"))).start()
            return 3

        logging.basicConfig(stream=sys.stderr, format="%(message)s")
        cli.main = command
        cli.run()
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 1_000_000 + ("late" if thread else "")
    assert "to stderr" in done.stderr and "logged" in done.stderr


def _shape(parser) -> list:
    """Every option, positional and default of a parser and of the subcommands below it."""
    import argparse

    shape = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            shape.append(sorted((name, _shape(sub)) for name, sub in action.choices.items()))
        else:
            shape.append((tuple(action.option_strings), action.dest, action.nargs, repr(action.default)))
    return shape + [sorted(parser._defaults)]


def test_each_command_parses_with_only_its_own_parser_built_and_the_same_arguments():
    """CLI-1: a command builds its own parser, not the 35 others; what it accepts is unchanged."""
    from musicfs.cli.main import _command_in, build_parser

    every = build_parser()
    (commands,) = [a for a in every._actions if a.choices and a.dest == "command"]
    for name, full in commands.choices.items():
        only = build_parser(name)
        assert only is not every
        (built,) = [a for a in only._actions if a.dest == "command"]
        assert list(built.choices) == [name]
        assert _shape(built.choices[name]) == _shape(full), name
    assert _command_in(["--state-dir", "mount", "-v", "status", "x"]) == "status"
    assert _command_in(["-vv", "--state-dir=s", "cache", "stats"]) == "cache"
    assert _command_in(["-v", "--help", "mount"]) is None
    assert build_parser("no-such-command") is every


def test_help_lists_every_command_and_an_unknown_one_is_named_with_the_choices():
    listed = run("musicfs.cli.main", "--help").stdout
    for command in ("scan", "mount", "umount", "status", "cache", "search", "manager", "publish", "systemd-unit"):
        assert command in listed
    unknown = run("musicfs.cli.main", "-v", "mountt", "x", check=False)
    assert unknown.returncode == 2
    assert "invalid choice: 'mountt'" in unknown.stderr and "'mount'" in unknown.stderr
    assert "--foreground" in run("musicfs.cli.main", "mount", "--help").stdout
