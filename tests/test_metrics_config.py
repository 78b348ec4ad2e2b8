"""``[metrics] listen`` validation and the latency recorder's buckets (the real-mount checks are in
conformance/test_metrics.py)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from musicfs.config import parse_config
from musicfs.control.metrics import LatencyRecorder, _cumulative
from musicfs.errors import ConfigError

ORIGIN = '\n[[origins]]\nid = "a"\ntype = "local"\npath = "/srv/music"\n'


@pytest.mark.parametrize("listen, expected", [("127.0.0.1:9877", ("127.0.0.1", 9877)),
                                              ("[::1]:9877", ("::1", 9877)),
                                              ("0.0.0.0:80", ("0.0.0.0", 80))])
def test_listen_takes_an_ip_and_a_port(listen, expected):
    assert parse_config(f'[metrics]\nlisten = "{listen}"\n{ORIGIN}').metrics_listen == expected
    assert parse_config(ORIGIN).metrics_listen is None  # off unless asked for


@pytest.mark.parametrize("value", ['"localhost:9877"', '"127.0.0.1"', '"127.0.0.1:0"', '"127.0.0.1:65536"',
                                   '"::1:9877"', "9877", '"300.1.1.1:80"'])
def test_a_bad_listen_names_its_line(value):
    with pytest.raises(ConfigError, match=r"^musicfs.toml:3: listen must be IP:PORT"):
        parse_config(f'# metrics for Prometheus\n[metrics]\nlisten = {value}\n{ORIGIN}', source="musicfs.toml")
    with pytest.raises(ConfigError, match=r"musicfs.toml:2: unknown key 'port' in \[metrics\]"):
        parse_config(f'[metrics]\nport = 9877\n{ORIGIN}', source="musicfs.toml")


def test_recorder_buckets_are_prometheus_le_buckets():
    recorder = LatencyRecorder(bounds=(0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 5.0):
        recorder.observe("read", seconds)
    counts, total = recorder.snapshot()["read"]
    assert counts == [2, 2, 1] and math.isclose(total, 5.0135)  # a value on a bound is in its bucket (le)
    assert _cumulative(recorder.bounds, counts) == [("0.001", 2), ("0.01", 4), ("+Inf", 5)]

    class One:  # the family as the mount's collector builds it, through prometheus_client and back
        def collect(self):
            family = HistogramMetricFamily("musicfs_fuse_latency_seconds", "t", labels=["op"])
            family.add_metric(["read"], _cumulative(recorder.bounds, counts), sum_value=total)
            yield family

    registry = CollectorRegistry()
    registry.register(One())
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples["musicfs_fuse_latency_seconds_count", None] == 5
    assert samples["musicfs_fuse_latency_seconds_bucket", "0.01"] == 4
