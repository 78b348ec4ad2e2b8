"""The health monitor's log through an outage: retries quiet, one line per give-up, one per transition."""

from __future__ import annotations

import logging

import pytest
import trio

from musicfs.errors import OriginUnavailable
from musicfs.origins.health import HealthMonitor
from musicfs.origins.local import LocalOrigin
from musicfs.origins.retry import Failure

pytestmark = pytest.mark.req("NFR-7.2")


def failure(attempt: int, final: bool) -> Failure:
    return Failure(OriginUnavailable("connection refused"), attempt, final,
                   tuple([0.0, 0.1, 0.6, 2.6][:attempt]), 2.6 if final else 0.0)


@pytest.fixture
def monitor(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    return HealthMonitor({"nas": LocalOrigin("nas", root)}, {"nas": 1}, interval=0.1), root


def lines(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name.endswith("health")]


def test_retried_attempts_are_info_and_a_give_up_is_one_warning_per_quiet_period(monitor, caplog):
    health, _ = monitor
    caplog.set_level(logging.INFO, logger="musicfs.origins.health")
    for read in range(5):  # five reads, each retried three times, then giving up
        for attempt in (1, 2, 3, 4):
            health.attempt_failed("nas", f"reading take-{read}.wav at 0", failure(attempt, attempt == 4))
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "take-0.wav" in warnings[0] and "after 4 attempts" in warnings[0]
    assert "started at 0.00, 0.10, 0.60, 2.60 s" in warnings[0]
    assert len(lines(caplog, logging.INFO)) == 5 * 3 + 4  # retries, and the four give-ups not warned of
    stats = health.statistics()["nas"]
    assert (stats["failed_attempts"], stats["failed_reads"]) == (20, 5)

    health.quiet = 0.0  # the quiet period is over: the next give-up is a WARNING that counts the rest
    health.attempt_failed("nas", "reading take-9.wav at 0", failure(1, True))
    last = lines(caplog, logging.WARNING)[-1]
    assert "take-9.wav" in last and "4 more reads of it gave up since" in last


def test_offline_and_recovered_are_logged_once_per_transition(monitor, caplog):
    health, root = monitor
    caplog.set_level(logging.INFO, logger="musicfs.origins.health")

    async def outage():
        assert await health.probe("nas") == "healthy"
        for _ in range(2):  # two outages
            away = root.with_name("away")
            root.rename(away)
            for _ in range(3):  # failing probes and reads: one transition
                assert await health.probe("nas") == "unhealthy"
                health.read_failed("nas", "gone")
                health.attempt_failed("nas", "reading a.flac at 0", failure(1, True))
            away.rename(root)
            assert await health.probe("nas") == "healthy"
            assert await health.probe("nas") == "healthy"

    trio.run(outage)
    warnings = lines(caplog, logging.WARNING)
    offline = [w for w in warnings if w.startswith("origin nas is offline")]
    recovered = [w for w in warnings if w.startswith("origin nas recovered")]
    assert len(offline) == 2 and len(recovered) == 2, warnings
    assert "3 reads failed meanwhile" in recovered[0]
    read_lines = [w for w in warnings if "reading a.flac" in w]
    assert len(read_lines) == 2  # one per outage: a new outage starts with a full line again
