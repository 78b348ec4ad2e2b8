"""How the CLI shows a running mount's answers: human units and rich tables, nothing computed.

Every function here takes a document exactly as the control API returned it
(``--json`` prints those documents as they are, with exact numbers) and turns
it into something to read: sizes in decimal units (``3.4 GB of 10.0 GB``),
durations in seconds, minutes or hours (``2.1 s``), rates in percent.
"""

from __future__ import annotations

import time
from typing import Any

from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table
from rich.text import Text

STATE_COLOURS = {"healthy": "green", "ready": "green", "degraded": "yellow", "syncing": "cyan",
                 "mounting": "cyan", "unknown": "white", "unhealthy": "red", "unmounting": "yellow",
                 "cached": "green", "fetching": "cyan", "waiting": "yellow", "missing": "red"}


def size(n: int | float | None) -> str:
    """Bytes in decimal units: ``43.3 kB``, ``3.4 GB``; ``-`` when unknown."""
    return "-" if n is None else decimal(int(n))


def duration(seconds: float | None) -> str:
    """``0.4 ms``, ``2.1 s``, ``3 min 20 s``, ``2 h 05 min``, ``3 d 4 h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f} %"


def ago(stamp: float | None, now: float | None = None) -> str:
    """How long ago a unix time was: ``12.0 s ago``; ``never`` without one."""
    if not stamp:
        return "never"
    return f"{duration(max(0.0, (now or time.time()) - stamp))} ago"


def state(name: str | None) -> Text:
    name = name or "unknown"
    return Text(name, style=STATE_COLOURS.get(name, "white"))


def _table(title: str | None = None, **kwargs: Any) -> Table:
    return Table(title=escape(title) if title else None, **kwargs)


# -- status -------------------------------------------------------------------


def status_heading(report: dict) -> Text:
    """The line above a mount's status table: its mountpoint and pid. Printed on its own line, in
    full (``soft_wrap``): as the table's title it was folded to the table's width, and a long
    mountpoint came out cut in two, where neither a reader nor ``grep`` finds it."""
    return Text(f"{report['mountpoint']}  (pid {report.get('pid', '?')})", style="italic")


def status_table(report: dict) -> Table:
    """One mount's /v1/status, or ``{"mountpoint", "pid", "error"}`` for one that did not answer
    (under :func:`status_heading`)."""
    table = _table(show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    if "error" in report:
        table.add_row(Text("not answering", style="red"), Text(str(report["error"])))
        return table
    index, cache = report["index"], report.get("cache") or {}
    table.add_row("state", state(report.get("state")))
    table.add_row("version", str(report.get("version", "?")))
    table.add_row("uptime", duration(report.get("uptime_seconds")))
    table.add_row("tracks", f"{index['tracks']} in {index['directories']} folders, {size(index['bytes'])}")
    table.add_row("skipped", f"{index['skipped']} malformed files (see .musicfs/errors.json)")
    age = index.get("age_seconds")
    table.add_row("index", Text(f"{index['path']}" + (f" (scanned {duration(age)} ago)" if age is not None
                                                      else "")))
    for origin in report.get("origins", []):
        line = Text.assemble(state(origin.get("state")), f" {origin.get('kind', '')} ",
                             str(origin.get("location", "")))
        table.add_row(Text(f"origin {origin['id']}"), line)
    table.add_row("open handles", str(report.get("open_handles", 0)))
    table.add_row("FUSE requests", str(report.get("fuse_ops_total", 0)))
    if cache:
        table.add_row("cache", f"{size(cache.get('bytes'))} of {size(cache.get('limit_bytes'))}, "
                               f"hit rate {percent(cache.get('hit_rate'))}")
    return table


# -- cache --------------------------------------------------------------------


def cache_table(stats: dict) -> Table:
    """/v1/cache: one row per measure, one column per tier."""
    tiers = stats.get("tiers") or {"chunks": stats}
    table = _table("cache")
    table.add_column("")
    for name in tiers:
        table.add_column(name, justify="right")
    rows: list[tuple[str, Any]] = [
        ("size", lambda t: size(t.get("bytes"))),
        ("limit", lambda t: size(t.get("limit_bytes"))),
        ("files cached", lambda t: f"{t.get('manifests', t.get('entries', 0))}" + (
            f" ({t['partial_manifests']} in part)" if t.get("partial_manifests") else "")),
        ("rebuilt by delta sync", lambda t: f"{t['manifests_delta']} ({size(t.get('reused_bytes', 0))} reused)"
                                            if "manifests_delta" in t else "-"),
        ("chunks", lambda t: str(t.get("chunks", "-"))),
        ("hits", lambda t: str(t.get("hits", 0))),
        ("misses", lambda t: str(t.get("misses", "-"))),
        ("hit rate", lambda t: percent(t.get("hit_rate"))),
        # what maps list twice is stored once (the cache's bytes also hold headers and covers)
        ("saved by dedup", lambda t: f"{size(round(t.get('logical_bytes', 0) * t['dedup_ratio']))} "
                                     f"({percent(t.get('dedup_ratio'))})" if "dedup_ratio" in t else "-"),
        ("evictions", lambda t: f"{t.get('evictions', 0)} ({size(t.get('evicted_bytes', 0))})"),
        ("corrupt chunks refetched", lambda t: str(t.get("corruptions", t.get("dropped", 0)))),
        ("writable", lambda t: "yes" if t.get("writable", True) else f"no: {t.get('write_problem')}"),
    ]
    for label, value in rows:
        table.add_row(label, *(Text(value(t)) for t in tiers.values()))
    if stats.get("directory"):
        table.caption = escape(str(stats["directory"]))
    return table


def clear_line(result: dict) -> str:
    """/v1/cache/clear's answer, in one sentence."""
    files = result.get("manifests", 0)
    what = (f"{files} cached file{'s' if files != 1 else ''}, {result.get('chunks', 0)} chunks "
            f"({result.get('entries', 0)} entries) from tier {result.get('tier', 'chunks')}")
    if result.get("dry_run"):
        return f"would clear {what}, {size(result.get('bytes', 0))} (dry run: nothing removed)"
    return f"cleared {what}: {size(result.get('bytes_freed', 0))} freed"


# -- origins ------------------------------------------------------------------


def origins_table(origins: list[dict]) -> Table:
    table = _table("origins")
    for column, justify in (("id", "left"), ("kind", "left"), ("location", "left"), ("health", "left"),
                            ("probe", "right"), ("tracks", "right"), ("size", "right"),
                            ("last sync", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    now = time.time()
    for origin in origins:
        latency = origin.get("latency_ms")
        table.add_row(Text(origin["id"]), origin.get("kind", ""), Text(str(origin.get("location", ""))),
                      state(origin.get("state")), duration(latency / 1000) if latency is not None else "-",
                      str(origin.get("tracks", 0)), size(origin.get("bytes")), ago(origin.get("last_sync"), now))
    return table


def origin_table(origin: dict) -> Table:
    """/v1/origins/{id}: its health in detail."""
    table = _table(f"origin {origin['id']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    now = time.time()
    latency = origin.get("latency_ms")
    table.add_row("health", state(origin.get("state")))
    table.add_row("kind", str(origin.get("kind", "")))
    table.add_row("location", Text(str(origin.get("location", ""))))
    table.add_row("probe latency", duration(latency / 1000) if latency is not None else "-")
    table.add_row("last check", ago(origin.get("checked_at"), now))
    table.add_row("last error", Text(str(origin.get("error") or "none")))
    if origin.get("offline_since"):
        table.add_row("offline since", ago(origin["offline_since"], now))
    table.add_row("failed reads", f"{origin.get('failed_reads', 0)} ({origin.get('failed_attempts', 0)} attempts)")
    table.add_row("tracks", f"{origin.get('tracks', 0)} ({size(origin.get('bytes'))}), "
                            f"{origin.get('skipped', 0)} skipped")
    table.add_row("last sync", ago(origin.get("last_sync"), now))
    return table


# -- rescans ------------------------------------------------------------------


def progress_numbers(document: dict) -> tuple[str, int, int | None, str]:
    """(phase, files scanned, total if known, current file) of one rescan progress document."""
    scanned = next((document[k] for k in ("scanned", "files_scanned", "seen") if k in document), 0)
    current = next((document[k] for k in ("current", "current_file") if document.get(k)), "")
    total = document.get("total")
    return str(document.get("phase", "")), int(scanned or 0), total if isinstance(total, int) else None, current


def rescan_summary(origin_id: str, last: dict) -> Table:
    """The last document of a rescan, its numbers as they came."""
    table = _table(f"rescan of origin {origin_id}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in last.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str) or key in ("current", "origin"):
            continue
        shown = duration(value) if key.endswith("seconds") and isinstance(value, int | float) else str(value)
        table.add_row(key.replace("_", " "), Text(shown))
    return table


# -- events -------------------------------------------------------------------


def event_line(event: dict) -> Text:
    """One event of the feed as a line: time, type, origin, path, then its other fields."""
    if event.get("type") == "dropped":
        count = event.get("count", 0)
        return Text(f"… {count} event{'s' if count != 1 else ''} dropped here (this reader fell behind)",
                    style="yellow")
    at = event.get("at")
    clock = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}" if at else "-"
    kind = str(event.get("type", "?"))
    colour = ("red" if "Disconnected" in kind or "Corrupt" in kind or "Error" in kind or "Mismatch" in kind
              else "green" if "Connected" in kind or "Added" in kind else "cyan")
    line = Text.assemble((clock, "dim"), "  ", (f"{kind:<18}", colour))
    if event.get("origin_id"):
        line.append(f"  {event['origin_id']}")
    if event.get("path"):
        line.append(f"  {event['path']}")
    extra = []
    for key, value in event.items():
        if key in ("type", "at", "origin_id", "path") or value is None or value == "":
            continue
        if key in ("size", "bytes") and isinstance(value, int):
            value = size(value)
        elif key == "seconds" and isinstance(value, int | float):
            value = duration(value)
        elif key == "latency_ms" and isinstance(value, int | float):
            value = duration(value / 1000)
            key = "latency"
        extra.append(f"{key.replace('_', ' ')} {value}")
    if extra:
        line.append("  (" + ", ".join(extra) + ")", style="dim")
    return line


# -- shutdown -----------------------------------------------------------------


def shutdown_line(mountpoint: str, answer: dict, unmounted: bool | None) -> str:
    how = "at once" if answer.get("force") else \
        f"after reads under way (up to {duration(answer.get('drain_timeout_ms', 0) / 1000)})"
    if unmounted is None:
        return f"{mountpoint}: unmounting {how}"
    if unmounted:
        return f"{mountpoint}: unmounted {how}"
    return f"{mountpoint}: asked to unmount {how}, but it is still mounted"


# -- search -------------------------------------------------------------------

MATCH_STYLE = "bold black on yellow"


def marked(value: Any, spans: list | None) -> Text:
    """A field's text with the search's matched spans ([start, end) characters) highlighted."""
    text = Text("" if value is None else str(value))
    for start, end in spans or ():
        text.stylize(MATCH_STYLE, int(start), int(end))
    return text


def search_table(page: dict, mountpoint: str | None = None) -> Table:
    """A /v1/search answer (or the same document read from the index): one row per track, best first.

    The path column is where a player opens the file: under ``mountpoint`` when a
    mount answered, the path inside the library otherwise.
    """
    table = _table(None)
    for name in ("artist", "album", "title"):
        table.add_column(name, overflow="fold")
    table.add_column("year", justify="right")
    table.add_column("format")
    table.add_column("path" if mountpoint else "virtual path", overflow="fold")
    root = (mountpoint or "").rstrip("/")
    for hit in page.get("results", []):
        spans = hit.get("highlights") or {}
        table.add_row(marked(hit.get("artist"), spans.get("artist")), marked(hit.get("album"), spans.get("album")),
                      marked(hit.get("title"), spans.get("title")), Text(str(hit.get("year") or "")),
                      Text(hit.get("format") or ""), Text(f"{root}/{hit['virtual_path']}"))
    return table


def search_summary(page: dict, where: str) -> str:
    """``3 of 120 matches in 4.2 ms (from /mnt)``; the page's place when it is not the first."""
    shown, total = len(page.get("results", [])), page.get("total", 0)
    place = f" (from #{page['offset'] + 1})" if page.get("offset") and shown else ""
    return f"{shown} of {total} match{'es' if total != 1 else ''}{place} in {page.get('query_time_ms', 0):.1f} ms ({where})"


def collections_table(collections: list[dict]) -> Table:
    """/v1/collections: name, query, where it comes from (the config or a command)."""
    table = _table(None)
    table.add_column("name")
    table.add_column("query", overflow="fold")
    table.add_column("from")
    for item in collections:
        table.add_row(Text(item["name"]), Text(item["query"]),
                      Text("config file" if item.get("source") == "config" else "musicfs collection add"))
    return table


def pins_summary(answer: dict) -> str:
    """/v1/pins in a line: how many, and how much of their room they hold."""
    return (f"{len(answer.get('pins', []))} pinned, holding {size(answer.get('size'))} of the "
            f"{size(answer.get('room'))} pins may use")


def pins_table(answer: dict) -> Table:
    """/v1/pins: every pin, where the mount shows it, its size, how much is cached, its state."""
    pins = answer.get("pins", [])
    table = _table(None)
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("cached", justify="right")
    table.add_column("state")
    for pin in pins:
        where = pin["path"] or f"({pin['origin']}:{pin['real_path']}, not in the library now)"
        table.add_row(Text(where), size(pin["size"]), size(pin["cached"]), state(pin["state"]))
    return table


def plugins_table(plugins: list[dict]) -> Table:
    """``musicfs plugins``: each origin kind, metadata source and audio format (with the extensions it
    reads), the package that provides it, where from, and whether it loads."""
    table = _table(None)
    for column in ("what", "name", "package", "version", "from", "loads"):
        table.add_column(column, overflow="fold")
    for item in plugins:
        loads = Text("yes", style="green") if item["loads"] else Text(item["error"] or "no", style="red")
        what = item["group"].removeprefix("musicfs.").removesuffix("s")  # origin, metadata, format
        name = item["name"] + (f" ({' '.join(item['extensions'])})" if item.get("extensions") else "")
        table.add_row(what, Text(name), Text(item["package"]), Text(item["version"]), Text(item["from"]), loads)
    return table
