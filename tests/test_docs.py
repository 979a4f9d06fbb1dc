"""Run the examples in the docs: every ```python block of the pages below, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: pages whose python blocks form one program, run top to bottom.
PAGES = ["quickstart.md", "configuration.md", "sessions.md"]
#: pages whose python blocks are each a complete program, run on its own; a block opened
#: with ```python NAME.py is a file the others import, saved in the directory first.
PROGRAMS = ["architecture.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


@pytest.mark.parametrize("page", PAGES)
def test_python_examples_run(page, tmp_path, monkeypatch):
    """Twice in the same directory: a reader runs an example again, with the files the first
    run left (a state file, keys, reports) still there."""
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python examples"
    monkeypatch.chdir(tmp_path)
    for run in (1, 2):
        namespace: dict = {"__name__": f"docs_{page.replace('.', '_')}"}
        for index, block in enumerate(blocks):
            code = compile(block, f"{page} (example {index + 1}, run {run})", "exec")
            exec(code, namespace)  # noqa: S102 - our own documentation, not user input


@pytest.mark.parametrize("page", PROGRAMS)
def test_each_python_example_is_a_complete_program(page, tmp_path, monkeypatch):
    """Each example alone, in a fresh namespace, with only the files the page says to save;
    all of them twice in the same directory."""
    import sys

    text = (DOCS / page).read_text()
    files = re.findall(r"```python (\S+\.py)\n(.*?)```", text, re.S)
    programs = python_blocks(DOCS / page)
    assert programs, f"{page} has no python examples"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, body in files:
        (tmp_path / name).write_text(body)
    for run in (1, 2):
        for index, block in enumerate(programs):
            for name, _ in files:  # each program imports the saved files afresh, as `python x.py` would
                monkeypatch.delitem(sys.modules, Path(name).stem, raising=False)
            code = compile(block, f"{page} (example {index + 1}, run {run})", "exec")
            exec(code, {"__name__": "__main__"})  # noqa: S102 - our own documentation, not user input


@pytest.mark.parametrize("page", ["quickstart.md", "writing-plugins.md"])
def test_yaml_config_examples_are_valid_configs(page):
    from wyneos_core.config import load_config

    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert blocks, f"{page} has no yaml examples"
    for block in blocks:
        load_config(text=block)  # raises ConfigError naming the field if the docs drift from the schema


def test_the_validate_example_prints_what_the_page_says(tmp_path):
    """docs/configuration.md: the `wyneos validate` session, run in a shell, twice in one directory."""
    import subprocess
    import sys

    page = (DOCS / "configuration.md").read_text()
    [script] = re.findall(r"```sh validate-example\n(.*?)```", page, re.S)
    [expected] = re.findall(r"```text validate-output\n(.*?)```", page, re.S)
    bindir = Path(sys.executable).parent
    for _ in range(2):
        out = subprocess.run(["bash", "-e", "-c", script.replace("wyneos validate", f"{bindir}/wyneos validate")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1  # the page says: exit status 1
        assert out.stdout.replace(str(tmp_path), "DIR") == expected, out.stdout + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml", "policy.yaml"]  # nothing else written


def test_every_table_is_one_table():
    """A table's rows follow its header and separator with nothing between them (a row
    after a paragraph is shown as text: the `state` table of configuration.md was)."""
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        lines, fenced = page.read_text().splitlines(), False
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and line.startswith("|") and (number == 1 or not lines[number - 2].startswith("|")):
                if number >= len(lines) or not re.match(r"\|\s*:?-", lines[number]):
                    broken.append(f"{page.name}:{number}: {line[:60]}")
    assert not broken, broken


def test_the_state_table_lists_every_state_setting():
    from wyneos_core.config import schema

    page = (DOCS / "configuration.md").read_text()
    section = page.split("## `state`", 1)[1].split("\n## ", 1)[0]
    table = re.search(r"\n(\|.*\|\n)+", section).group(0)
    rows = re.findall(r"^\| `([\w.]+)` \|", table, re.M)
    state = schema()["properties"]["state"]["properties"]
    want = [k for k in state if k != "etcd"] + [f"etcd.{k}" for k in state["etcd"]["properties"]]
    assert sorted(rows) == sorted(want)

