"""README code blocks run as written (each in a fresh process and an empty working directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: Sections whose Python blocks run as written.
SECTIONS = ("Use it with MONAI", "Use it with Lightning")


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("section", SECTIONS)
def test_readme_section_runs_as_written(section: str, tmp_path: Path) -> None:
    blocks = python_blocks(section)
    assert blocks, f"README section {section!r} has no Python block"
    for number, block in enumerate(blocks):
        script = tmp_path / f"block{number}.py"
        script.write_text(block)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(
            [sys.executable, str(script)],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        if section == "Use it with MONAI":
            assert "torch.Size([2, 1, 51, 51, 20]) ['RAS', 'RAS']" in done.stdout
