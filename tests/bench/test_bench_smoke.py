"""`make bench` stays runnable: a tiny run completes and writes a well-formed report.

No timing is asserted here (the numbers are the benchmark's business, and this
machine is shared); only that the harness runs end to end and reports every row.
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_tiny_quick_bench_writes_a_table(tmp_path):
    out = tmp_path / "bench-out"
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "bench.py"), "--quick", "--tiny", "--only",
         "rand1g", "--no-drop-caches", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    md = (out / "results.md").read_text()
    assert md in proc.stdout                       # printed and saved alike
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| target | tool |"))
    assert set(lines[header + 1]) <= set("|-")
    ncols = lines[header].count("|")
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        assert line.count("|") == ncols, line
        rows.append([c.strip() for c in line.strip("|").split("|")])
    tools = [r[1] for r in rows]
    expected = ["snapcore", "snapcore --live", "ceiling r+w", "ceiling r"]
    if shutil.which("gcore") and shutil.which("gdb"):
        expected.insert(0, "gcore")
    assert tools == expected
    for r in rows:
        assert "failed" not in r[-1], r
        assert r[2] != "n/a" and r[3] != "n/a", r       # wall and pause were measured
    assert "## Goals" in md

    data = json.loads((out / "results.json").read_text())
    assert data["reps"] == 1
    assert {r["tool"] for r in data["runs"]} == set(expected)
    assert not [r for r in data["runs"] if r.get("error")]
    assert all(g["status"] in ("PASS", "FAIL", "n/a") for g in data["goals"])
    assert not os.path.exists(out / "work")        # every core was deleted
