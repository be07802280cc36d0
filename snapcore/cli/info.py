"""snapcore info CORE [--json]: what a core holds.

Reads snapcore's cores and those of the kernel and gcore, plain or .zst,
and bundles (snapcore PID --bundle): the core inside is described, and each
mapped file says whether the bundle, this machine's disk (same build-id) or
nothing provides it.  --json prints one object with the schema documented in
docs/formats.md ("schema": "snapcore-info/1"; a bundle adds "bundle").

Exit status: 0 described; 1 the file cannot be read or is not a core;
2 usage error.
"""

import json
import os
import sys
import time

from ..bundle import is_bundle, open_bundle
from ..read.coreinfo import inspect_core
from ..units import human
from . import common

PROG = "snapcore info"
INTERRUPTED = "interrupted"


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Describe a core file: process, threads (with the "
        "symbol at each pc when the mapped files are readable), mappings, "
        "build-ids and snapcore's metadata.  Reads kernel and gcore cores too, "
        "and .zst cores without decompressing them to disk.",
        epilog="exit status: 0 described, 1 not readable or not a core, 2 usage error",
    )
    p.add_argument("core", metavar="CORE", help="core file (plain or zstd-compressed)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (schema snapcore-info/1, see docs/formats.md)",
    )
    p.add_argument(
        "--no-symbols", action="store_true", help="do not open the mapped ELF files to name the pcs"
    )
    p.add_argument(
        "--pid", type=common.pid, help="in a tree's bundle: the process to describe (default: root)"
    )
    return p


def run(args, argv):
    if is_bundle(args.core):
        core, sysroot, manifest = open_bundle(args.core, pid=args.pid)
        report = inspect_core(core, symbols=not args.no_symbols, sysroot=sysroot)
        report["bundle"] = _bundle_facts(args.core, core, sysroot, manifest)
    else:
        report = inspect_core(args.core, symbols=not args.no_symbols)
    if args.json:
        print(json.dumps(report))
    else:
        sys.stdout.write(format_text(report))
    return 0


def _bundle_facts(path, core, sysroot, manifest):
    pid = next((c["pid"] for c in manifest["cores"] if c["member"] == os.path.basename(core)), None)
    return {
        "path": path,
        "core": core,
        "sysroot": sysroot,
        "pid": pid,
        "pids": [c["pid"] for c in manifest["cores"]],
        "files": sum(1 for f in manifest["files"] if f.get("member")),
        "left_out": [
            {"path": f["path"], "why": f["left_out"]}
            for f in manifest["files"]
            if f.get("left_out") and pid in (f.get("pids") or [])
        ],
    }


def _hex(n):
    return f"{n:#x}" if n is not None else "-"


def _kernel(k):
    """'futex, wchan futex_do_wait' from a thread's kernel key."""
    if not k:
        return "-"
    call = k.get("syscall")
    parts = [call["name"] if call else "user code"]
    if k.get("wchan"):
        parts.append(f"wchan {k['wchan']}")
    if k.get("state") == "D" and k.get("stack"):
        parts.append("kernel stack " + " <- ".join(k["stack"][:3]))
    return ", ".join(parts)


def format_text(r):
    out = []
    add = out.append
    c, p = r["core"], r["process"]
    size = f"{human(c['core_size'])}"
    if c["compressed"]:
        size += f", {c['compressed']} {human(c['file_size'])}"
    add(f"core       {c['path']}  ({c['producer']}, {c['arch']}, {c['segments']} segments, {size})")
    add(
        f"process    pid {p['pid']} ({p['comm']}), ppid {p['ppid']}, uid {p['uid']}, "
        f"state {p['state']}"
    )
    if p["executable"]:
        add(f"executable {p['executable']}")
    args = " ".join(p["cmdline"]) if p["cmdline"] else p["psargs"]
    if args:
        add(f"command    {args}")
    add(f"signal     {p['signal_name'] or 'none (taken on demand)'}")
    add(f"threads    {len(r['threads'])}")
    add(
        f"  {'':1} {'TID':>8}  {'NAME':15} {'STATE':5} {'PC':18}  {'SIGNAL':8} {'SYMBOL':32} KERNEL"
    )
    for t in r["threads"]:
        add(
            f"  {'*' if t['current'] else ' '} {t['tid']:>8}  {t['name'] or '-':15} "
            f"{t['state'] or '-':5} {t['pc']:#018x}  {t['signal_name'] or '-':8} "
            f"{t['symbol'] or '-':32} {_kernel(t.get('kernel'))}"
        )
    m = r["memory"]
    add(
        f"memory     {human(m['dumped'])} dumped of {human(m['mapped'])} mapped, "
        f"{m['mappings']} segments"
    )
    add(f"  {'START':>18} {'END':>18} {'SIZE':>10} {'DUMPED':>10} PERM FILE")
    for mp in r["mappings"]:
        f = mp["file"] or ""
        if f and mp["offset"]:
            f += f" @{mp['offset']:#x}"
        add(
            f"  {mp['start']:#18x} {mp['end']:#18x} {human(mp['size']):>10} "
            f"{human(mp['dumped']):>10} {mp['perms']:4} {f}"
        )
    b = r.get("bundle")
    if b is not None:
        add(
            f"bundle     {b['path']}: {b['files']} files, cores of pid "
            f"{', '.join(map(str, b['pids']))}; unpacked in {os.path.dirname(b['core'])}"
        )
        for f in b["left_out"]:
            add(f"  left out {f['path']}: {f['why']}")
    add(f"modules    {len(r['modules'])}  (provided by: the bundle, this disk, or -: nothing)")
    for mod in r["modules"]:
        note = ""
        if mod["matches"] is False:
            note = "  (file on disk differs)"
        elif mod["build_id_source"] == "file":
            note = "  (from the file)"
        by = mod.get("provided_by") or "-"
        add(f"  {mod['start']:#18x} {mod['build_id'] or '-':40} {by:6} {mod['file']}{note}")
    if r.get("debuginfod"):
        add(f"debuginfod DEBUGINFOD_URLS={r['debuginfod']}: gdb may fetch debug info by build-id")
    s = r["snapcore"]
    if s is not None:
        when = s.get("time") or time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.get("time_unix", 0))
        )
        add(
            f"snapcore   {s.get('snapcore')}, mode {s.get('mode')}, trigger "
            f"{s.get('trigger')}, {when} on {s.get('host')}"
        )
        if s.get("reason"):
            add(f"  reason   {s['reason']}")
        if s.get("final"):
            add(f"  paused   {s['pause_seconds'] * 1000:.0f} ms, wall {s['wall_seconds']:.2f} s")
        else:
            add("  paused   not recorded in a compressed core (see its --metadata sidecar)")
        add(f"  filter   {s.get('coredump_filter')} ({s.get('filter_source')})")
        dropped = s.get("dropped") or []
        if s.get("truncated") or dropped:
            add(
                f"  dropped  {human(sum(d['bytes'] for d in dropped))} in {len(dropped)} "
                f"regions{' (TRUNCATED to fit --max-size)' if s.get('truncated') else ''}"
            )
        if s.get("unreadable"):
            add(
                f"  unreadable {len(s['unreadable'])} ranges, "
                f"{human(sum(u['len'] for u in s['unreadable']))}"
            )
    for w in r["warnings"]:
        add(f"warning    {w}")
    return "\n".join(out) + "\n"
