"""The debugger command lines that open an unpacked bundle.

    gdb      gdb -iex 'set sysroot S' -iex 'set solib-search-path D1:D2...' [ARGS] EXE -c CORE
    lldb     lldb [ARGS] -O 'settings set target.exec-search-paths D1 D2 ...'
                  -O 'settings append target.debug-file-search-paths D1 ...'
                  --core CORE EXE
    pystack  pystack core CORE EXE --lib-search-root S [ARGS]

gdb finds a core's shared libraries by the names the dynamic linker's list
holds (l_name, e.g. /lib/x86_64-linux-gnu/libc.so.6); with the sysroot set it
looks for them under S only, and the solib search path (every directory of S
that holds a file) catches names that differ from the file's own path
(/lib vs /usr/lib on merged-/usr systems, symlinked names).  -iex: the
settings must be in place before gdb loads the executable and the core.
"""

import os
import shlex

KINDS = ("gdb", "lldb", "pystack")


def file_dirs(sysroot):
    """Every directory under sysroot that holds a regular file, sorted."""
    out = []
    for here, _dirs, names in os.walk(sysroot):
        if any(os.path.isfile(os.path.join(here, n)) for n in names):
            out.append(here)
    return sorted(out)


def argv_for(kind, core, sysroot, exe, extra=(), program=None):
    """The command line that opens core with the bundle's files (kind: KINDS)."""
    dirs = file_dirs(sysroot)
    extra = list(extra)
    if kind == "gdb":
        argv = [program or "gdb", "-iex", f"set sysroot {sysroot}"]
        if dirs:
            argv += ["-iex", f"set solib-search-path {':'.join(dirs)}"]
        return argv + extra + ([exe] if exe else []) + ["-c", core]
    if kind == "lldb":
        argv = [program or "lldb"] + extra
        if dirs:
            quoted = " ".join(shlex.quote(d) for d in dirs)
            argv += ["-O", f"settings set target.exec-search-paths {quoted}"]
            argv += ["-O", f"settings append target.debug-file-search-paths {quoted}"]
        return argv + ["--core", core] + ([exe] if exe else [])
    if kind == "pystack":
        argv = [program or "pystack", "core", core] + ([exe] if exe else [])
        return argv + ["--lib-search-root", sysroot] + extra
    raise ValueError(f"unknown debugger {kind!r} (known: {', '.join(KINDS)})")


def shown(argv):
    """argv as one line a shell takes back."""
    return shlex.join(argv)
