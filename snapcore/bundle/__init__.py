"""Bundles: a core and the files it maps, in one archive any machine can open.

    snapcore PID --bundle -o app.tar.zst     capture/bundling.py writes one
    snapcore debug app.tar.zst               cli/debug.py opens one in gdb/lldb/pystack

    open_bundle(path, pid=None) -> (core_path, sysroot, manifest)
        unpacked once into $XDG_CACHE_HOME/snapcore/bundles/<sha256>, checked
        (unpack.py); sysroot is the directory to hand gdb as its sysroot

The format (members, bundle.json) is layout.py; writing is pack.py.  This
package imports only snapcore's formats (elf/, units, errors): capture/
calls pack.py to write, the CLI and readers call unpack.py to open.
"""

from .layout import SCHEMA
from .unpack import cache_root, core_entry, executable, is_bundle, open_bundle

__all__ = ["SCHEMA", "cache_root", "core_entry", "executable", "is_bundle", "open_bundle"]
