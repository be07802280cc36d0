"""A `why` result as text: the verdict first, then the evidence.

format_text(result)          what `snapcore why` prints
brief(result, max_lines=20)  the verdict and the top groups, for a failure
                             report (the pytest plugin, `snapcore run`)
"""

import os

from .why import describe_edge

MAX_FRAMES = 8


def _py(frame):
    # "name (/path/file.py:12)" -> "name (file.py:12)"
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where)}" if where else name


def _stack_lines(g, indent, max_frames):
    out = []
    if g["python_stack"]:
        frames = [_py(f) for f in g["python_stack"][:max_frames]]
        more = " <- ..." if len(g["python_stack"]) > max_frames else ""
        out.append(f"{indent}python: " + " <- ".join(frames) + more)
    if g["stack"]:
        more = " <- ..." if len(g["stack"]) > max_frames else ""
        out.append(f"{indent}native: " + " <- ".join(g["stack"][:max_frames]) + more)
    return out


def _threads_of(g, limit=8):
    by_pid = {}
    for pid, tid in g["threads"]:
        by_pid.setdefault(pid, []).append(tid)
    parts = []
    for pid, tids in by_pid.items():
        shown = ", ".join(str(t) for t in tids[:limit]) + (", ..." if len(tids) > limit else "")
        parts.append(f"pid {pid}: {shown}")
    return "; ".join(parts)


def _names(result):
    return {(p["pid"], t["tid"]): t.get("name") for p in result["processes"] for t in p["threads"]}


def _cycle_lines(result, indent="  "):
    names = _names(result)
    out = []
    for i, cycle in enumerate(result["deadlocks"], 1):
        out.append(f"{indent}deadlock {i} ({len(cycle)} threads):")
        for n in cycle:
            name = names.get((n["pid"], n["tid"]))
            who = f"pid {n['pid']} thread {n['tid']}" + (f" ({name})" if name else "")
            out.append(f"{indent}  {who} waits for {describe_edge(n['waits_for'])}")
    return out


def _group_head(g):
    progress = f"  [{g['progress']}]" if g.get("progress") else ""
    n = g["count"]
    return f"{n} thread{'s' if n != 1 else ''} ({_threads_of(g)}){progress}"


def format_text(result, max_frames=MAX_FRAMES):
    out = [f"verdict    {result['verdict']}", f"summary    {result['summary']}"]
    if result.get("samples"):
        out.append(f"samples    {result['samples']}")
    if result["deadlocks"]:
        out.append("")
        out += _cycle_lines(result, indent="")
    out.append("")
    out.append(f"stacks     {len(result['groups'])} groups")
    for g in result["groups"]:
        out.append(f"  {_group_head(g)}")
        out += _stack_lines(g, "      ", max_frames)
    out.append("")
    for p in result["processes"]:
        head = f"pid {p['pid']}"
        if p.get("comm"):
            head += f" ({p['comm']})"
        if p.get("error"):
            out.append(f"{head}: no core: {p['error']}")
            continue
        extra = []
        if p.get("verdict"):
            extra.append(p["verdict"])
        if p.get("unfrozen"):
            extra.append(f"NOT FROZEN ({p['unfrozen']}): from /proc only, no stacks")
        if p["kernel_state"] != "recorded":
            extra.append("kernel state not recorded (not a snapcore core)")
        if p.get("unwinder"):
            extra.append(f"stacks by {p['unwinder']}")
        if p.get("python"):
            py = p["python"]
            extra.append(f"python {py.get('version') or '?'} stacks from {py.get('source')}")
            if py.get("errors"):  # e.g. a CPython this reader does not know
                extra.append(f"python reader: {py['errors'][0]}")
        out.append(f"{head}: " + ", ".join(extra))
        for t in p["threads"]:
            k = t["kernel"]
            call = k.get("syscall")
            what = t["class"]
            if call is not None:
                what += f" in {call['name']}"
                if t["timeout"] is not None:
                    what += " (timeout)" if t["timeout"] else " (no timeout)"
            if k.get("wchan") and t["class"] in ("uninterruptible", "sleeping"):
                what += f", wchan {k['wchan']}"
            line = f"  {t['tid']:>8} {t.get('name') or '-':15} {k.get('state') or '?'} {what}"
            if t["waits_for"] is not None:
                line += f"\n{'':27}waits for {describe_edge(t['waits_for'])}"
            out.append(line)
            if t["class"] == "uninterruptible" and k.get("stack"):
                out.append(f"{'':27}kernel: " + " <- ".join(k["stack"][:6]))
    return "\n".join(out) + "\n"


def brief(result, max_lines=20, max_frames=4):
    """At most max_lines lines: the verdict, the cycles, then the largest groups."""
    lines = [f"snapcore why: {result['summary']}"]
    for p in result["processes"]:  # what the verdict could not see
        errors = (p.get("python") or {}).get("errors")
        if errors:
            lines.append(f"  pid {p['pid']}: python reader: {errors[0]}")
    lines += _cycle_lines(result)
    for g in result["groups"]:
        if len(lines) >= max_lines:
            break
        lines.append(f"  {_group_head(g)}")
        lines += _stack_lines(g, "      ", max_frames)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["  ... (snapcore why DIR shows the rest)"]
    return lines
