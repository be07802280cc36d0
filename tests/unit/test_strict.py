"""Strict mode: a missing oracle fails the run instead of skipping a test."""

import os
import re
import subprocess
import sys

from support.targets import ROOT, TESTS

SAMPLE = """
import pytest
from support.strict import missing

def test_needs_an_oracle():
    missing("the frobnicator is not installed")

def test_skips_on_its_own():
    pytest.skip("not through the helper")

def test_passes():
    pass
"""


def _run(tmp_path, strict):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SNAPCORE_"))}
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT])
    if strict:
        env["SNAPCORE_REQUIRE_ORACLES"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_strict_mode_a_missing_oracle_skips_and_is_counted(tmp_path):
    p = _run(tmp_path, strict=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"\b1 passed, 2 skipped\b", p.stdout), p.stdout
    assert "snapcore tests: 2 skipped (1 for a missing oracle); strict mode off" in p.stdout


def test_under_strict_mode_every_skip_fails(tmp_path):
    p = _run(tmp_path, strict=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"\b2 failed, 1 passed\b", p.stdout), p.stdout
    assert "oracle missing: the frobnicator is not installed" in p.stdout
    assert "skipped under SNAPCORE_REQUIRE_ORACLES=1: " in p.stdout  # the plain skip
    assert "snapcore tests: 0 skipped (0 for a missing oracle); strict mode on" in p.stdout


def test_every_skip_of_the_suite_goes_through_the_helper():
    """pytest.skip, skipif and importorskip bypass strict mode: only support/strict.py
    may call pytest.skip."""
    pattern = re.compile(r"pytest\.(skip\(|importorskip\(|mark\.skip)|\bskipif\b")
    helper = os.path.join(TESTS, "support", "strict.py")
    offenders = []
    for top, dirs, files in os.walk(TESTS):
        dirs[:] = [d for d in dirs if d not in ("bench", "bin", "__pycache__")]
        for name in files:
            path = os.path.join(top, name)
            if not name.endswith(".py") or path in (helper, __file__):
                continue
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if pattern.search(line):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
