"""``projmig demo`` as a newcomer sees it: what projmig styles is styled, what comes from the data (a
study's name) is shown literally, and nothing is wider than 100 columns when the output is a log."""

from __future__ import annotations

import io
import re

import pytest
from prefect.settings import get_current_settings

from flows.console import NOT_A_TERMINAL_WIDTH, make_console
from flows.demo import DEMO_STUDY, run_demo

GREEN, ANSI = "\x1b[32m", re.compile(r"\x1b\[[0-9;]*m")


async def test_the_demo_styles_its_own_words_and_shows_names_literally(
    prefect: None, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
    console = make_console(file=io.StringIO(), record=True)  # a log, not a terminal
    assert not console.is_terminal

    await run_demo(console)

    styled, plain = console.export_text(styles=True, clear=False), console.export_text()
    # projmig's own words carry their style: verify's verdict is a green "equal:"
    (verdict,) = [line for line in styled.splitlines() if "(SHA-256)" in line]
    assert verdict.startswith(f"{GREEN}equal:"), verdict
    # the study's name is the data's: its brackets are text, not markup, in the report's project lines
    projects = [line for line in plain.splitlines() if DEMO_STUDY in line]
    assert len(projects) == 3 and f"{DEMO_STUDY} (study): 5 nodes" in projects[0], plain  # the study and its 2 jobs
    assert "[green]" not in plain and "[/]" not in plain  # no markup of projmig's leaks as text
    assert ANSI.search(plain) is None
    # the rules fit a log's 100 columns (lines of text are never cut: a name or a key stays in one piece)
    rules = [line for line in plain.splitlines() if line.startswith("─")]
    assert len(rules) == 3 and all(len(rule) == NOT_A_TERMINAL_WIDTH for rule in rules), rules
    assert plain.rstrip().splitlines()[-2].startswith("nothing to do: 3 projects already migrated"), plain
