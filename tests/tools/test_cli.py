"""The command line's presentation: the progress bar, --help, usage errors."""

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from support.procs import (
    assert_one_line_error,
    assert_runs_on,
    run,
    snapcore_cli,
)

# --- progress ----------------------------------------------------------------------------


def run_on_pty(argv, env_extra, timeout=120):
    """Run argv with stderr on a pseudo-terminal; return (rc, stdout, terminal output)."""
    master, slave = pty.openpty()
    env = dict(os.environ, **env_extra)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "CLI did not finish"
            r, _, _ = select.select([master], [], [], left)
            if not r:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read().decode()
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(mt, tmp_path):
    cli = [sys.executable, "-m", "snapcore", str(mt.pid), "-f"]
    # a snapshot longer than the delay draws a bar on the terminal, then erases it
    rc, out, term = run_on_pty(cli + ["-o", str(tmp_path / "a")], {"SNAPCORE_PROGRESS_DELAY": "0"})
    assert rc == 0 and str(tmp_path / "a") in out
    assert re.search(r"\[[=> ]+\] +\d+% .*/s", term), term
    assert "100%" in term and term.endswith("\r\x1b[K"), repr(term)
    # shorter than the default delay (1 s): nothing drawn
    rc, out, term = run_on_pty(cli + ["-o", str(tmp_path / "b")], {})
    assert rc == 0 and term == "", repr(term)
    # --quiet: nothing at all, even past the delay
    rc, out, term = run_on_pty(
        cli + ["-o", str(tmp_path / "c"), "-q"], {"SNAPCORE_PROGRESS_DELAY": "0"}
    )
    assert rc == 0 and out == "" and term == ""
    # not a terminal: nothing on stderr
    p = run(cli + ["-o", str(tmp_path / "d")], env=dict(os.environ, SNAPCORE_PROGRESS_DELAY="0"))
    assert p.returncode == 0 and p.stderr == ""
    assert_runs_on(mt)


# --- help and usage errors -----------------------------------------------------------------


def test_help_names_every_option():
    p = snapcore_cli("--help")
    assert p.returncode == 0
    for opt in (
        "--all",
        "--mini",
        "--max-size",
        "--compress",
        "--metadata",
        "--reason",
        "--json",
        "--quiet",
        "--filter",
        "%p",
        "%e",
        "%t",
        "%h",
        "info",
        "decompress",
    ):
        assert opt in p.stdout, opt
    p = snapcore_cli("info", "--help")
    assert p.returncode == 0 and "--json" in p.stdout and "kernel" in p.stdout
    p = snapcore_cli("decompress", "--help")
    assert p.returncode == 0 and "-o" in p.stdout and "sparse" in p.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--max-size", "lots"], "not a size"),
        (["--max-size", "0"], "positive"),
        (["--mini", "--all"], "exclude each other"),
        (["--compress", "lz4"], "invalid choice"),
        (["--filter", "xyz"], "coredump_filter"),
        (["--reason"], "expected one argument"),
    ],
)
def test_usage_errors(args, fragment):
    p = snapcore_cli("1", *args)
    assert_one_line_error(p, 2, fragment)
