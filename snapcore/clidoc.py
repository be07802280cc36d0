"""The man page and the bash/zsh completion scripts, generated from the CLI's parsers.

    snapcore manpage > snapcore.1                     man -l snapcore.1
    snapcore completion bash > ~/.local/share/bash-completion/completions/snapcore
    snapcore completion zsh > ~/.zfunc/_snapcore      (a directory in $fpath)

Each generator takes the commands as a list of (command name, ArgumentParser)
pairs, the top-level command first and each subcommand after it, named as
typed:

    [("snapcore", p0), ("snapcore info", p1), ("snapcore run", p2), ...]

and reads only what argparse declares (option strings, metavars, choices,
nargs, help, mutually exclusive groups), so the page and the scripts follow
the parsers without being edited (snapcore.cli.main.parsers() lists them).
The scripts are plain bash and zsh: nothing is added to snapcore's runtime
dependencies.
"""

import argparse
import datetime
import os
import re

from ._version import __version__

SEE_ALSO = ("gdb(1)", "lldb(1)", "eu-stack(1)", "gcore(1)", "core(5)", "ptrace(2)")


# ---------------------------------------------------------------------------
# what a parser declares


def _actions(parser):
    """The parser's documented actions (those whose help is not SUPPRESSed), in order."""
    return [a for a in parser._actions if a.help is not argparse.SUPPRESS]


def _help(parser, action):
    """An action's help with argparse's %-substitutions done (%(default)s, %%)."""
    if not action.help:
        return ""
    params = dict(vars(action), prog=parser.prog)
    for key, value in list(params.items()):
        if value is argparse.SUPPRESS:
            del params[key]
        elif hasattr(value, "__name__"):
            params[key] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return action.help % params


def _metavar(action):
    if action.metavar is not None:
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _takes_value(action):
    return bool(action.option_strings) and action.nargs != 0


def _value_kind(action):
    """How a shell completes this option's value or this positional: 'choices', 'pid',
    'dir', 'file', 'command' (CMD [ARGS...]) or 'none' (a number, free text)."""
    if action.choices is not None:
        return "choices"
    if action.nargs == argparse.REMAINDER:
        return "command"
    if action.dest == "pid":
        return "pid"
    meta = _metavar(action).upper()
    if meta == "DIR":
        return "dir"
    if re.search(r"PATH|FILE|CORE", meta):
        return "file"
    return "none"


def _first_sentence(text):
    """Up to the first '.' or ';' that ends a clause outside parentheses."""
    text = " ".join(text.split())
    for m in re.finditer(r"[.;](?=\s|$)", text):
        head = text[: m.start()]
        if head.count("(") == head.count(")"):
            return head
    return text


def _subcommand(name):
    """'snapcore info' -> 'info'; the top-level command -> None."""
    return name.split(" ", 1)[1] if " " in name else None


# ---------------------------------------------------------------------------
# man page


def _roff(text):
    """Plain text as roff: backslashes escaped; no line may start with a control character."""
    text = text.replace("\\", "\\e")
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.splitlines())


def _roff_opt(s):
    return s.replace("\\", "\\e").replace("-", "\\-")


def _roff_action(parser, action):
    if action.option_strings:
        names = ", ".join(f"\\fB{_roff_opt(o)}\\fR" for o in action.option_strings)
        if _takes_value(action):
            names += f" \\fI{_roff_opt(_metavar(action))}\\fR"
    else:
        names = f"\\fI{_roff_opt(_metavar(action))}\\fR"
    return f".TP\n{names}\n{_roff(_help(parser, action))}"


def _roff_usage(parser):
    usage = " ".join(parser.format_usage().split())
    usage = usage[len("usage: ") :] if usage.startswith("usage: ") else usage
    rest = usage.partition(parser.prog)[2]
    return f".B {_roff_opt(parser.prog)}\n{_roff_opt(rest.strip())}"


def _roff_parser(parser, sub):
    """Description, arguments, options and epilog; as .SH sections, or paragraphs (sub)."""
    lines = []
    if parser.description:
        lines.append(_roff(" ".join(parser.description.split())))
    positionals = [a for a in _actions(parser) if not a.option_strings]
    options = [a for a in _actions(parser) if a.option_strings]
    if positionals:
        lines.append(".PP\nArguments:" if sub else ".SH ARGUMENTS")
        lines += [_roff_action(parser, a) for a in positionals]
    if options:
        lines.append(".PP\nOptions:" if sub else ".SH OPTIONS")
        lines += [_roff_action(parser, a) for a in options]
    if parser.epilog:
        lines.append(".PP\n" + _roff(" ".join(parser.epilog.split())))
    return lines


def manpage(parsers, date=None):
    """The roff text of NAME.1 for [(command name, parser)], top-level command first."""
    (name, top), subs = parsers[0], parsers[1:]
    if date is None:  # reproducible builds set SOURCE_DATE_EPOCH
        when = os.environ.get("SOURCE_DATE_EPOCH")
        date = (
            datetime.datetime.fromtimestamp(int(when), datetime.timezone.utc).date()
            if when
            else datetime.date.today()
        ).isoformat()
    lines = [
        f'.TH {name.upper()} 1 "{date}" "{name} {__version__}" "User Commands"',
        ".SH NAME",
        f"{name} \\- {_roff(_first_sentence(top.description or ''))}",
        ".SH SYNOPSIS",
        _roff_usage(top),
    ]
    for _, p in subs:
        lines += [".br", _roff_usage(p)]
    lines.append(".SH DESCRIPTION")
    lines += _roff_parser(top, sub=False)
    if subs:
        lines.append(".SH COMMANDS")
        for sub_name, p in subs:
            lines += [f".SS {_roff_opt(sub_name)}", _roff_usage(p), ".PP"]
            lines += _roff_parser(p, sub=True)
    lines += [".SH SEE ALSO", ", ".join("\\fB{}\\fR({}".format(*s.split("(")) for s in SEE_ALSO)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# bash


def _words(words):
    return " ".join(map(str, words))


def _bash_case(name):
    """The case pattern of a command in the script: its subcommand word, "" for the top one."""
    return _subcommand(name) or '""'


def _bash_reply(kind, action, extra_words=""):
    """The bash statement that completes a value of this kind."""
    if kind == "choices":
        return f'COMPREPLY=( $(compgen -W "{_words(action.choices)}" -- "$cur") )'
    if kind == "pid":
        return (
            f'COMPREPLY=( $(compgen -W "{extra_words} $(command ps -e -o pid= '
            f'2>/dev/null)" -- "$cur") )'
        )
    if kind == "dir":
        return 'COMPREPLY=( $(compgen -d -- "$cur") )'
    if kind in ("file", "command"):
        return 'COMPREPLY=( $(compgen -f -- "$cur") )'
    return ":"  # a number or free text: nothing to offer


def bash_completion(parsers):
    """A bash completion script (complete -F) for [(command name, parser)]."""
    name, subs = parsers[0][0], parsers[1:]
    fn = "_" + re.sub(r"\W", "_", name)
    sub_names = [_subcommand(n) for n, _ in subs]
    out = [
        f"# bash completion for {name} {__version__}, generated by '{name} completion bash'",
        "# from its argparse parsers (snapcore/clidoc.py).  Source it, or put it in",
        f"# ~/.local/share/bash-completion/completions/{name}.",
        f"{fn}() {{",
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}",
        '    local cmd="" i first=1',
        "    COMPREPLY=()",
        "    if (( COMP_CWORD > 1 )); then",
        "        case ${COMP_WORDS[1]} in",
    ]
    if sub_names:
        out.append(f"            {'|'.join(sub_names)}) cmd=${{COMP_WORDS[1]}}; first=2 ;;")
    out += [
        "        esac",
        "    fi",
        "    # after the '--' of a command that runs CMD [ARGS...]: a command, then files",
        "    for (( i = first; i < COMP_CWORD; i++ )); do",
        "        if [[ ${COMP_WORDS[i]} == -- ]]; then",
        "            case $cmd in",
    ]
    for n, p in parsers:
        if any(_value_kind(a) == "command" for a in _actions(p)):
            out += [
                f"                {_bash_case(n)})",
                "                    if (( i == COMP_CWORD - 1 )); then",
                '                        COMPREPLY=( $(compgen -c -- "$cur") )',
                '                    else COMPREPLY=( $(compgen -f -- "$cur") ); fi',
                "                    return ;;",
            ]
    out += [
        "            esac",
        "        fi",
        "    done",
        "    local opts",
        "    case $cmd in",
    ]
    for n, p in parsers:
        opts = [o for a in _actions(p) for o in a.option_strings]
        out += [
            f"        {_bash_case(n)})",
            f'            opts="{_words(opts)}"',
            "            case $prev in",
        ]
        for a in _actions(p):
            if _takes_value(a):
                reply = _bash_reply(_value_kind(a), a)
                out.append(f"                {'|'.join(a.option_strings)}) {reply}; return ;;")
        out.append("            esac")
        positionals = [a for a in _actions(p) if not a.option_strings]
        if positionals:
            first = positionals[0]
            reply = _bash_reply(_value_kind(first), first, _words(sub_names))
            out += [
                "            if [[ $cur != -* ]]; then",
                f"                {reply}",
                "                return",
                "            fi",
            ]
        out.append("            ;;")
    out += [
        "    esac",
        '    COMPREPLY=( $(compgen -W "$opts" -- "$cur") )',
        "}",
        f"complete -o filenames -F {fn} {name}",
    ]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# zsh


def _zsh_quote(text):
    """The first sentence of text, for inside a single-quoted _arguments or _describe word."""
    text = _first_sentence(text)
    return (
        text.replace("\\", "\\\\")
        .replace("'", "'\\''")
        .replace("[", "\\[")
        .replace("]", "\\]")
        .replace(":", "\\:")
    )


_ZSH_ACTION = {
    "pid": "_pids",
    "dir": "_files -/",
    "file": "_files",
    "none": " ",
    "command": "_command_names -e",
}


def _zsh_value(action):
    kind = _value_kind(action)
    if kind == "choices":
        return "(" + _words(action.choices) + ")"
    return _ZSH_ACTION[kind]


def _zsh_specs(parser, positionals=True):
    """_arguments specs of the parser's actions, each a shell word."""
    exclusive = {}
    for g in parser._mutually_exclusive_groups:
        for a in g._group_actions:
            exclusive.setdefault(id(a), []).extend(
                o for b in g._group_actions if b is not a for o in b.option_strings
            )
    specs = []
    for a in _actions(parser):
        desc = _zsh_quote(_help(parser, a))
        if a.option_strings:
            names = a.option_strings
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                excl = ["-", "*"]  # alone on the line
            else:
                excl = list(names) + exclusive.get(id(a), [])
            head = f"({' '.join(excl)})" if len(excl) > 1 else ""
            value = f":{_zsh_quote(_metavar(a))}:{_zsh_value(a)}" if _takes_value(a) else ""
            if len(names) > 1:
                specs.append(f"'{head}'{{{','.join(names)}}}'[{desc}]{value}'")
            else:
                specs.append(f"'{head}{names[0]}[{desc}]{value}'")
        elif not positionals:
            continue
        elif a.nargs == argparse.REMAINDER:
            specs.append("'*::command:_normal'")
        else:
            specs.append(f"':{_zsh_quote(_metavar(a))}:{_zsh_value(a)}'")
    return specs


def _zsh_arguments(specs, indent):
    pad = " " * indent
    return (
        [f"{pad}_arguments -s -S \\"]
        + [f"{pad}    {s} \\" for s in specs[:-1]]
        + [f"{pad}    {specs[-1]}"]
    )


def zsh_completion(parsers):
    """A zsh completion function (#compdef, _arguments) for [(command name, parser)]."""
    (name, top), subs = parsers[0], parsers[1:]
    fn = "_" + re.sub(r"\W", "_", name)
    out = [
        f"#compdef {name}",
        f"# zsh completion for {name} {__version__}, generated by '{name} completion zsh'",
        f"# from its argparse parsers (snapcore/clidoc.py).  Save it as _{name} in a",
        "# directory of $fpath, then run compinit.",
        "",
        f"{fn}_first() {{",
        "    local ret=1",
        "    local -a commands=(",
    ]
    out += [f"        '{_subcommand(n)}:{_zsh_quote(p.description or '')}'" for n, p in subs]
    out += [
        "    )",
        "    _describe -t commands command commands && ret=0",
        "    _pids && ret=0",
        "    return ret",
        "}",
        "",
        f"{fn}() {{",
        "    if (( CURRENT > 2 )); then",
        "        case ${words[2]} in",
    ]
    for n, p in subs:
        out += [f"            {_subcommand(n)})", "                shift words; (( CURRENT-- ))"]
        out += _zsh_arguments(_zsh_specs(p), 16)
        out.append("                return ;;")
    out += ["        esac", "    fi"]
    # the first word is a process id or a subcommand
    out += _zsh_arguments(
        _zsh_specs(top, positionals=False) + [f"':process id or command:{fn}_first'"], 4
    )
    out += ["}", "", f'{fn} "$@"']
    return "\n".join(out) + "\n"


SHELLS = {"bash": bash_completion, "zsh": zsh_completion}
