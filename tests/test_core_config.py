from __future__ import annotations

import textwrap

import pytest

from wyneos_core.config import Config, ConfigError, load_config


def bad(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(text=textwrap.dedent(text).lstrip())
    return info.value


def test_defaults_fill_every_section():
    c = Config.defaults()
    assert c["tick"]["interval"] == 6.0
    assert c["decide"]["max_unhealthy_fraction"] == 0.55
    assert c["mesh"]["topology"] == "small_world"
    assert c["plugins"]["disable"] == []


def test_demo_config_loads():
    c = load_config(None)
    assert c["demo"]["enabled"] is True
    assert len(c["nodes"]) >= 10


def test_unknown_field_is_named_with_its_line():
    e = bad("""
        tick:
          interval: 2
          intervall: 3
    """)
    assert e.field == "tick.intervall" and e.line == 3
    assert "unknown field 'intervall'" in str(e) and str(e).startswith("<config>:3")


def test_wrong_type_names_field_and_line():
    e = bad("""
        heartbeat:
          stale_after: soon
    """)
    assert e.field == "heartbeat.stale_after" and e.line == 2
    assert "expected a number, got 'soon'" in e.reason


def test_bad_enum_lists_the_choices():
    e = bad("mesh: {topology: hypercube}\n")
    assert e.field == "mesh.topology" and "'ring'" in e.reason


def test_duplicate_node_ids_are_refused():
    e = bad("""
        nodes:
          - id: a
          - id: a
    """)
    assert e.field == "nodes[1].id" and e.line == 3 and "duplicate node id" in e.reason


def test_offline_before_stale_is_refused():
    e = bad("heartbeat: {stale_after: 30, offline_after: 10}\n")
    assert e.field == "heartbeat.offline_after"


def test_edges_to_unknown_nodes_are_refused():
    e = bad("""
        nodes: [{id: a}]
        mesh: {topology: explicit, edges: [[a, b]]}
    """)
    assert e.field == "mesh.edges[0]" and "'b'" in e.reason


def test_yaml_syntax_error_has_line_and_column():
    e = bad("tick:\n  interval: [1, 2\n")
    assert e.line is not None and "invalid YAML" in e.reason


def test_duplicate_keys_and_aliases_are_refused():
    assert "duplicate key 'tick'" in bad("tick: {}\ntick: {}\n").reason
    assert "anchors and aliases" in bad("nodes:\n  - &n {id: a}\n  - *n\n").reason


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "wyneos.yaml"
    path.write_text("report:\n  stdout: loud\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:2")
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text("state: {path: s.db}\n")
    c = load_config(path)
    assert c.resolve(c["state"]["path"]) == tmp_path / "sub" / "s.db"
