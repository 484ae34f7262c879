"""Every README code block runs as written, in document order, from a copy of the repository's configs.

The only blocks left out are the Quickstart's ``make demo`` / ``make test`` (``make test`` would run this suite
inside itself; ``make demo`` is tested by sample/test_demo.py) and untagged blocks (sample output).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks() -> list[tuple[str, str, str]]:
    """(section, language, code) of every tagged block, in order."""
    found = []
    section = ""
    for match in re.finditer(r"^## ([^\n]+)$|^```(\w+)\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        if match.group(1):
            section = match.group(1)
        else:
            found.append((section, match.group(2), match.group(3)))
    return found


def test_every_block_is_run_or_named_here() -> None:
    languages = {language for _, language, _ in blocks()}
    assert languages == {"bash", "python"}, languages
    quickstart = [code for section, _, code in blocks() if section == "Quickstart"]
    assert len(quickstart) == 1 and "make demo" in quickstart[0] and "make test" in quickstart[0]


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {  # as a new user's shell: no AWS_* variables (conftest sets some for the other tests)
        **{name: value for name, value in os.environ.items() if not name.startswith("AWS_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONWARNINGS": "ignore",
    }
    outputs = []
    try:
        for number, (section, language, code) in enumerate(blocks()):
            if section == "Quickstart":
                continue
            script = tmp_path / f"block{number}.{'py' if language == 'python' else 'sh'}"
            script.write_text(code)
            command = (
                [sys.executable, str(script)] if language == "python" else ["bash", "-euo", "pipefail", str(script)]
            )
            done = subprocess.run(
                command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=500, env=env
            )
            assert done.returncode == 0, f"{section} block {number}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            outputs.append((section, done.stdout))
    finally:
        subprocess.run(
            [sys.executable, "-m", "ahi_torch", "local", "stop", "--data-dir", "runs/ahi"],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            env=env,
        )
    text = dict(outputs)
    assert "epoch 1:" in text["Use it from a training script"]
    assert "torch.Size([2, 1, 51, 51, 20]) ['RAS', 'RAS']" in text["Use it with MONAI"]
    assert "torch.Size([16, 1, 64, 64])" in text["Use it from a config"]
    pathology = text["Use it for pathology (whole-slide images)"]
    assert "3 ((1000, 700), (500, 350), (250, 175)) 0.25" in pathology
    assert "torch.Size([16, 3, 128, 128]) torch.uint8" in pathology
    assert "ahi-torch-demo" in text["The local AHI"] and "stopped local service" in text["The local AHI"]
