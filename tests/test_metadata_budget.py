"""NFR-5.1's setting: `[cache] metadata_size`, 100 MB unless configured, and how it is split."""

from __future__ import annotations

import pytest

from musicfs.config import parse_config
from musicfs.errors import ConfigError
from musicfs.index.library import LibraryIndex
from musicfs.index.metacache import MetadataBudget

ORIGIN = '\n[[origins]]\nid = "a"\ntype = "local"\npath = "/music"\n'


def test_default_is_100_mb_and_a_size_is_accepted():
    assert parse_config(ORIGIN).metadata_cache_size == 100 * 10**6
    assert parse_config('[cache]\nmetadata_size = "20MB"\n' + ORIGIN).metadata_cache_size == 20 * 10**6
    assert parse_config('[cache]\nmetadata_size = "1GiB"\n' + ORIGIN).metadata_cache_size == 2**30


@pytest.mark.parametrize("value", ['"lots"', '"1MB"', '"100TB"', "-5", "true"])
def test_bad_values_name_the_line(value):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[cache]\nmetadata_size = {value}\n" + ORIGIN)
    message = str(caught.value)
    assert message.startswith("<config>:2:") and ("metadata_size must be between" in message or "not a size" in message)


def test_the_bound_is_split_and_applied_to_sqlite(tmp_path):
    budget = MetadataBudget(20 * 10**6)
    assert budget.sqlite_cache_kib * 1024 + budget.max_nodes * 600 <= 20 * 10**6
    with LibraryIndex(tmp_path / "i.db", budget=budget) as index:
        assert index.conn.execute("PRAGMA cache_size").fetchone()[0] == -budget.sqlite_cache_kib
        assert index.conn.execute("PRAGMA mmap_size").fetchone()[0] == 0
