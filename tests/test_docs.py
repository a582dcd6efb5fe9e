"""The README is the user's contract: its test command is the one CI runs."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Run the tests", 1)[1].split("```bash\n", 1)[1]
    command = section.split("\n```", 1)[0].strip()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
