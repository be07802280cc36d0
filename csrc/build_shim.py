"""cffi build script for the C shim (API mode, out of line).

setup.py names it in ``cffi_modules``, so ``pip install .`` compiles
``snapcore._shim``.  The cdef is csrc/snapcore.h itself, minus preprocessor
lines: the header is the one statement of the contract.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _cdef_text(path):
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text(os.path.join(HERE, "snapcore.h")))
ffibuilder.set_source(
    "snapcore._shim",
    '#include "snapcore.h"',
    # setuptools wants sources relative to setup.py; the __main__ build below
    # runs from elsewhere and swaps in the absolute path.
    sources=[os.path.join("csrc", "snapcore.c")],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder._assigned_source[3]["sources"] = [os.path.join(HERE, "snapcore.c")]
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=True)
