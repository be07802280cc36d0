"""snapcore manpage and snapcore completion bash|zsh, generated from the argparse parsers.

Oracles: groff (the page renders without warnings), bash itself (the script parses, and
driving the completion function through COMP_WORDS/COMP_CWORD offers what the parsers
accept), zsh (the script parses and compinit registers it for snapcore).
"""

import argparse
import os
import re
import sys

from snapcore import clidoc
from snapcore.cli.main import COMMANDS
from snapcore.cli.main import parsers as all_parsers

from support.procs import run
from support.strict import need_tool as require_tool


def snapcore_out(*args):
    p = run([sys.executable, "-m", "snapcore", *args], check=True)
    assert p.stderr == ""
    return p.stdout


def test_manpage_mentions_every_option_of_every_parser():
    parsers = all_parsers()
    names = [n for n, _ in parsers]
    # every command of the dispatcher is documented
    assert names == [f"snapcore {s}".strip() for s in COMMANDS]
    page = snapcore_out("manpage")
    text = page.replace("\\-", "-").replace("\\e", "\\")
    for name, parser in parsers:
        if name != "snapcore":
            assert f".SS {name}\n" in text, name
        for action in parser._actions:
            for opt in action.option_strings:
                assert re.search(rf"\\fB{re.escape(opt)}\\fR", text), (name, opt)
            if action.choices:
                assert all(str(c) in text for c in action.choices), (name, action.choices)
            elif not action.option_strings:
                assert f"\\fI{action.metavar or action.dest}\\fR" in text, (name, action.dest)
            if action.help and action.help is not argparse.SUPPRESS and "%" not in action.help:
                assert " ".join(action.help.split()) in " ".join(text.split()), action.help
    assert page.startswith(".TH SNAPCORE 1 ") and "snapcore 0." in page.splitlines()[0]


def test_manpage_renders_without_warnings():
    require_tool("groff")
    page = snapcore_out("manpage")
    p = run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_manpage_escapes_roff():
    p = argparse.ArgumentParser(prog="t", description="leading. dot")
    p.add_argument(
        "--x", help=".starts with a dot, has a back\\slash, 100%% and %(default)s", default=3
    )
    page = clidoc.manpage([("t", p)], date="2026-01-01")
    assert "\n\\&.starts with a dot, has a back\\eslash, 100% and 3\n" in page
    assert '.TH T 1 "2026-01-01"' in page


def test_manpage_date_follows_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert clidoc.manpage(all_parsers()).startswith('.TH SNAPCORE 1 "2023-11-14"')


def complete_bash(script_path, *words):
    """What the completion offers for the last word, driven like bash does on <TAB>."""
    words_q = " ".join(f"'{w}'" for w in words)
    p = run(
        [
            "bash",
            "--norc",
            "--noprofile",
            "-c",
            f"source {script_path}; complete -p snapcore; COMP_WORDS=({words_q}); "
            f"COMP_CWORD={len(words) - 1}; _snapcore; "
            'for w in "${COMPREPLY[@]}"; do echo "$w"; done',
        ],
        check=True,
    )
    spec, *reply = p.stdout.splitlines()
    assert spec == "complete -o filenames -F _snapcore snapcore"
    return reply


def test_bash_completion(tmp_path):
    script = tmp_path / "snapcore.bash"
    script.write_text(snapcore_out("completion", "bash"))
    assert run(["bash", "-n", str(script)]).returncode == 0
    assert complete_bash(script, "snapcore", "1234", "--mi") == ["--mini"]
    assert complete_bash(script, "snapcore", "--compress", "") == ["zstd"]
    assert complete_bash(script, "snapcore", "--stop-timeout", "") == []  # a number
    assert complete_bash(script, "snapcore", "in") == ["info"]
    assert complete_bash(script, "snapcore", "info", "--no") == ["--no-symbols"]
    assert complete_bash(script, "snapcore", "run", "--g") == ["--grace"]
    assert complete_bash(script, "snapcore", "completion", "") == ["bash", "zsh"]
    # the first word may be a pid: ours is among them
    assert str(os.getpid()) in complete_bash(script, "snapcore", str(os.getpid())[:-1])
    # after run's '--': a command name, then its arguments are files
    assert "bash" in complete_bash(script, "snapcore", "run", "--timeout", "5", "--", "bas")
    (tmp_path / "afile").write_text("")
    assert complete_bash(script, "snapcore", "run", "--", "ls", str(tmp_path / "af")) == [
        str(tmp_path / "afile")
    ]


def test_zsh_completion(tmp_path):
    require_tool("zsh")
    (tmp_path / "_snapcore").write_text(snapcore_out("completion", "zsh"))
    p = run(["zsh", "-n", str(tmp_path / "_snapcore")])
    assert p.returncode == 0, p.stderr
    p = run(
        [
            "zsh",
            "-fc",
            f"fpath=({tmp_path} $fpath); autoload -U compinit; "
            "compinit -u -D; print -r -- $_comps[snapcore]",
        ],
        check=True,
    )
    assert p.stdout == "_snapcore\n"


def test_completion_usage_error():
    p = run([sys.executable, "-m", "snapcore", "completion", "fish"])
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("snapcore: error: argument shell: invalid choice: 'fish'")
    assert len(p.stderr.splitlines()) == 1
