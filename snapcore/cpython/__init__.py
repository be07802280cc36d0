"""CPython's own state, read from the memory of a process or a core.

    locate.find_runtime(mappings)   where _PyRuntime is (the ELF file on disk names it)
    walk.walk(Memory(read), rt)     Python threads, frames (function, file, line),
                                    the GIL's holder, the locks frames reference
    memory.Memory                   page-cached reads that remember what they read

Capture walks the frozen process and records the result in the core's
SNAPCORE note (and keeps what it read in a --mini core); ``snapcore why``
walks a core's memory when the note has nothing.  CPython 3.11, 3.12 and
3.13 on x86_64 are supported (arch/cpython.py); other versions get no Python
stacks from snapcore's reader (pystack, where installed, reads full cores).
"""

from .locate import Runtime, find_runtime, python_version_of
from .memory import Memory
from .walk import walk

__all__ = ["Memory", "Runtime", "find_runtime", "python_version_of", "walk"]
