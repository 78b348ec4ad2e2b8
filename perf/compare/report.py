"""A comparison's figures: every round of every peer, the JSON document and the table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conformance.measure import median

from .goals import GOALS
from .library import CompareSize, Library
from .peers import PEERS
from .workload import METRICS, PeerRound


@dataclass
class Comparison:
    """Every round's figures of every peer that ran, and what the table and JSON say of them."""

    size: CompareSize
    rounds: int
    peers: list[str]  # ran, in column order
    skipped: dict[str, str]  # peer -> why it did not run
    versions: dict[str, str]
    library: Library
    run_dir: Path
    page_cache_dropped: bool
    per_round: dict[str, list[PeerRound]] = field(default_factory=dict)

    def values(self, metric: str, peer: str) -> list[float]:
        return [r.figures[metric] for r in self.per_round.get(peer, []) if metric in r.figures]

    def median(self, metric: str, peer: str) -> float | None:
        values = self.values(metric, peer)
        return median(values) if values else None

    def ratio(self, metric: str, peer: str) -> float | None:
        mine, theirs = self.median(metric, "musicfs"), self.median(metric, peer)
        return None if mine is None or not theirs else mine / theirs

    def goal(self, metric: str) -> tuple[bool | None, str]:
        goal = GOALS[metric]
        if goal.highest:
            return goal.judge(lambda peer: max(self.values(metric, peer), default=None))
        return goal.judge(lambda peer: self.median(metric, peer))

    def bytes_read(self, peer: str) -> dict[str, int]:
        """Bytes each read pass returned in the last round."""
        rounds = self.per_round.get(peer, [])
        return rounds[-1].bytes_read if rounds else {}

    def digests_match(self, peer: str) -> bool | None:
        checks = [r.digests_match for r in self.per_round.get(peer, []) if r.digests_match is not None]
        return all(checks) if checks else None

    def remount_fills(self) -> list[int]:
        """musicfs: origin fills started by each round's read after a remount (0: all cached)."""
        return [r.remount_fills for r in self.per_round.get("musicfs", []) if r.remount_fills is not None]

    def to_json(self) -> dict:
        metrics = {}
        for metric in METRICS:
            figures = {}
            for peer in self.peers:
                values = self.values(metric.key, peer)
                if values:
                    figures[peer] = {"median": median(values), "min": min(values),
                                     "max": max(values), "values": values}
            met, note = self.goal(metric.key)
            metrics[metric.key] = {
                "label": metric.label, "unit": metric.unit,
                "higher_is_better": metric.higher_is_better, "figures": figures,
                "musicfs_ratio": {p: r for p in self.peers if p != "musicfs"
                                  if (r := self.ratio(metric.key, p)) is not None},
                "goal": {"text": GOALS[metric.key].text, "met": met, "note": note}}
        return {
            "size": self.size.name, "rounds": self.rounds,
            "library": {"large_tracks": len(self.library.large),
                        "large_track_bytes": self.size.large_bytes,
                        "large_bytes": self.library.large_bytes,
                        "small_tracks": self.library.small_tracks,
                        "big_directory_entries": self.size.crowd_tracks},
            "page_cache_dropped": self.page_cache_dropped,
            "peers": {p: ({"ran": True, "version": self.versions.get(p, "")} if p in self.peers
                          else {"ran": False, "reason": self.skipped[p]})
                      for p in PEERS if p in self.peers or p in self.skipped},
            "bytes_read": {p: self.bytes_read(p) for p in self.peers},
            "digests_match": {p: self.digests_match(p) for p in self.peers},
            "musicfs_remount_fills": self.remount_fills(),
            "metrics": metrics,
        }

    def render(self) -> str:
        """The table: a row per metric, a column per peer, musicfs' ratio to each, the goal."""
        import io

        from rich.console import Console
        from rich.table import Table

        lib = self.library
        title = (f"musicfs and its peers: {len(lib.large)} long tracks of "
                 f"{self.size.large_bytes >> 20} MiB, {lib.small_tracks:,} small tracks "
                 f"({self.size.crowd_tracks:,} in one directory); median of {self.rounds} "
                 f"round(s) (range)")
        table = Table(title=title)
        table.add_column("metric")
        for peer in self.peers:
            table.add_column(peer, justify="right")
        others = [p for p in self.peers if p != "musicfs"] if "musicfs" in self.peers else []
        for peer in others:
            table.add_column(f"musicfs/{peer}", justify="right")
        table.add_column("goal")
        table.add_column("met")
        for metric in METRICS:
            cells = [f"{metric.label} ({metric.unit})"]
            for peer in self.peers:
                values = self.values(metric.key, peer)
                cells.append(_cell(values, metric.unit) if values else "-")
            for peer in others:
                ratio = self.ratio(metric.key, peer)
                cells.append("-" if ratio is None else f"{ratio:.2f}x")
            met, note = self.goal(metric.key)
            verdict = {True: "yes", False: "NO", None: "n/a"}[met]
            cells += [GOALS[metric.key].text, verdict + (f" ({note})" if note else "")]
            table.add_row(*cells)
        out = io.StringIO()
        Console(file=out, width=260, force_terminal=False).print(table)
        lines = [out.getvalue().rstrip()]
        for peer, why in self.skipped.items():
            lines.append(f"{peer}: skipped ({why})")
        if not self.page_cache_dropped:
            lines.append("the page cache could not be dropped (not root): cold figures are not cold")
        for peer in self.peers:
            match = self.digests_match(peer)
            if match is False:
                lines.append(f"{peer}: the long tracks read through it differ from the files")
        if any(self.remount_fills()):
            lines.append(f"musicfs: the read after a remount fetched from the origin again "
                         f"(fills per round {self.remount_fills()}): not all of it was cached")
        return "\n".join(lines)


def _cell(values: list[float], unit: str) -> str:
    def fmt(v: float) -> str:
        return f"{v:,.0f}" if unit == "MB/s" else f"{v:,.1f}" if unit == "MB" else f"{v:.2f}" if unit == "ms" else f"{v:.4f}"
    text = fmt(median(values))
    if len(values) > 1:
        text += f" ({fmt(min(values))}-{fmt(max(values))})"
    return text
