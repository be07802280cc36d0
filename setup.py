"""Only the compiled shim is declared here: everything else is in pyproject.toml.

cffi's setuptools hook (``cffi_modules``) has no pyproject.toml spelling, so
the build of ``snapcore._shim`` stays in a setup.py.  The shim is built for
Python's stable ABI (cffi's default), so one wheel serves every supported
Python: bdist_wheel is told so here, and the wheel is tagged cp39-abi3.
"""

from setuptools import setup

setup(
    cffi_modules=["csrc/build_shim.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
