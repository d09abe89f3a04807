"""The README and docs/ say what the code does: every python block runs as written, every
relative link resolves."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks():
    for page in PAGES:
        for number, block in enumerate(PYTHON_BLOCK.findall(page.read_text()), 1):
            yield pytest.param(block, id=f"{page.relative_to(ROOT)}#{number}")


@pytest.mark.parametrize("code", list(python_blocks()))
def test_python_blocks_run_as_written(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_there_is_a_python_block_to_run():
    assert list(python_blocks())


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    targets = [t for t in LINK.findall(page.read_text())
               if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing


def test_the_readme_stays_short():
    """The README is the first screen and the way in: at most 250 lines, the rest in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail to docs/"
