"""Configuration: valid files load; every bad line is rejected naming the line and the reason."""

from __future__ import annotations

import textwrap

import pytest

from musicfs.config import config_for_folder, load_config, parse_config, parse_size
from musicfs.errors import ConfigError
from musicfs.index.template import DEFAULT_TEMPLATE

pytestmark = pytest.mark.req("FS-8")

GOOD = textwrap.dedent("""\
    [library]
    name = "home"
    template = "$albumartist/$album/$track $title.$format"

    [cache]
    size = "512MiB"

    [[origins]]
    id = "nas"
    type = "local"
    path = "/srv/music"
    priority = 1

    [[origins]]
    id = "usb"
    type = "local"
    path = "~/usb"
    priority = 2
    cache = "never"
""")


def test_good_config_loads(tmp_path):
    path = tmp_path / "musicfs.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.name == "home"
    assert config.template.startswith("$albumartist")
    assert config.cache_size == 512 * 2**20
    assert [o.id for o in config.origins] == ["nas", "usb"]
    assert config.origins[1].cache == "never" and config.origins[1].priority == 2
    assert config.resolved_index_path(tmp_path).name == "home.db"


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source="musicfs.toml")
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[library]\ntemplate = "$artst/$title"\n[[origins]]\nid="a"\ntype="local"\npath="/m"\n', 2,
         "unknown variable $artst"),
        ('[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\n\n[[origins]]\nid = "b"\ntype = "ftp"\n', 8,
         "unknown origin type 'ftp'"),
        ('[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\npriority = "high"\n', 5, "priority must be int"),
        ('[[origins]]\nid = "a"\ntype = "local"\n', 1, "needs 'path'"),
        ('[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\n[[origins]]\nid = "a"\ntype = "local"\n'
         'path = "/n"\n', 6, "used twice"),
        ('[cache]\nsize = "lots"\n[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\n', 2, "not a size"),
        ('[library]\ncolour = "blue"\n[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\n', 2,
         "unknown key 'colour'"),
        ('[library\ntemplate = "x"\n', 1, "not valid TOML"),
        ('[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\ncache = "sometimes"\n', 5, "cache must be"),
        ('[library]\ntemplate = "$artist/$title"\n', None, "at least one [[origins]]"),
    ],
)
def test_bad_lines_are_named(text, line, words):
    error = _error(text)
    assert words in str(error)
    if line is not None:
        assert error.line == line
        assert str(error).startswith(f"musicfs.toml:{line}: ")


def test_unreadable_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


def test_sizes():
    assert parse_size("10GB") == 10 * 10**9
    assert parse_size("1.5 GiB") == int(1.5 * 2**30)
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("-3GB")


def test_folder_config_defaults(tmp_path):
    config = config_for_folder(tmp_path)
    assert config.template == DEFAULT_TEMPLATE
    assert config.origins[0].path == tmp_path
    assert config.cache_size == 10 * 10**9  # NFR-5.2 default
    # the same folder always maps to the same index: a second mount reuses it
    assert config.resolved_index_path(tmp_path) == config_for_folder(tmp_path).resolved_index_path(tmp_path)


ORIGIN = '[[origins]]\nid = "a"\ntype = "local"\npath = "/m"\n'


@pytest.mark.req("FAULT-35")
def test_allow_other_is_off_unless_asked_for():
    assert parse_config(ORIGIN).allow_other is False
    assert config_for_folder("/m").allow_other is False
    assert parse_config("[mount]\nallow_other = true\n" + ORIGIN).allow_other is True


@pytest.mark.parametrize(("text", "words"), [
    ('[mount]\nallow_other = "yes"\n', "allow_other must be bool"),
    ("[mount]\nallow_other = 1\n", "allow_other must be bool"),
    ("[mount]\nallow_root = true\n", "unknown key 'allow_root' in [mount]"),
])
def test_bad_mount_options_are_named(text, words):
    error = _error(text + ORIGIN)
    assert words in str(error) and error.line == 2


COLLECTIONS = ORIGIN + textwrap.dedent("""\

    [[collections]]
    name = "Nineties metal"
    query = 'genre:metal year:1990..1999 -live'

    [[collections]]
    name = "Björk, everything"
    query = "artist:bjork"
""")


@pytest.mark.req("FS-9")
def test_collections_load_in_order_with_their_queries():
    config = parse_config(COLLECTIONS)
    assert config.collections == [("Nineties metal", "genre:metal year:1990..1999 -live"),
                                  ("Björk, everything", "artist:bjork")]
    assert parse_config(ORIGIN).collections == []


@pytest.mark.req("FS-9")
@pytest.mark.parametrize(("entry", "key_line", "words"), [
    # the parser's and the name check's own words, at the line of the key at fault
    ('name = "ok"\nquery = \'"unbalanced\'\n', 2, "unbalanced quote"),
    ('name = "ok"\nquery = "colour:red"\n', 2, "unknown field 'colour'"),
    ('name = "ok"\nquery = "year:1999..1990"\n', 2, "runs backwards"),
    ('name = "ok"\nquery = "year:nineties"\n', 2, "not a year or a range"),
    ('name = "ok"\nquery = "!!!"\n', 2, "nothing to search for"),
    ('name = "a/b"\nquery = "x"\n', 1, "contains '/'"),
    ('name = ".hidden"\nquery = "x"\n', 1, "starts with a dot"),
    ('name = " padded"\nquery = "x"\n', 1, "starts or ends with a space"),
    ('name = ""\nquery = "x"\n', 1, "needs a name"),
    ('name = "tab\\there"\nquery = "x"\n', 1, "control or format character"),
    ('name = "' + "é" * 200 + '"\nquery = "x"\n', 1, "over 255 bytes"),
    ('name = 3\nquery = "x"\n', 1, "name must be str"),
    ('name = "ok"\nquery = ["x"]\n', 2, "query must be str"),
    ('name = "ok"\nquery = "x"\ncolour = "red"\n', 3, "unknown key 'colour' in [collections]"),
    ('name = "ok"\n', 0, "collection #2 needs 'query'"),
])
def test_bad_collections_are_refused_naming_file_line_and_reason(entry, key_line, words):
    """The second [[collections]] table is the bad one: the line is its key's (or its header's)."""
    text = COLLECTIONS.split("[[collections]]\nname = \"Björk")[0] + "[[collections]]\n" + entry
    header = text.splitlines().index("[[collections]]", text.splitlines().index("[[collections]]") + 1) + 1
    error = _error(text)
    assert words in str(error), str(error)
    assert error.line == header + key_line
    assert str(error).startswith(f"musicfs.toml:{header + key_line}: ")


@pytest.mark.req("FS-9")
def test_a_collection_name_used_twice_is_refused():
    error = _error(ORIGIN + '[[collections]]\nname = "x"\nquery = "a"\n[[collections]]\nname = "x"\nquery = "b"\n')
    assert "collection name 'x' is used twice" in str(error) and error.line == 9


@pytest.mark.req("FS-9")
def test_collections_must_be_tables():
    error = _error('collections = ["artist:x"]\n' + ORIGIN)
    assert "[[collections]] tables" in str(error)
