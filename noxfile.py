"""The test suite under every supported Python: `make matrix` (or `nox -s tests-3.9`).

Each session makes a venv from that interpreter, installs snapcore with its
test extra from this tree (not editable: pip builds and installs it as a user
would), and runs pytest from a scratch directory, so that neither the tests nor
the `python -m snapcore` they start can import the source tree instead of the
installed package.

The interpreters are pyenv's ($PYENV_ROOT/versions/X.Y.Z/bin, put first on
PATH here) or whatever python3.X is on PATH.  A missing one is an error under
CI or SNAPCORE_REQUIRE_ORACLES=1, a skipped session otherwise.

    SNAPCORE_MATRIX_TESTS   pytest arguments instead of the whole suite
                            (e.g. "tests/unit tests/capture/test_foundation.py")
"""

import glob
import os
import re
import shlex
import shutil

import nox

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "pyproject.toml"), encoding="utf-8") as f:
    # the supported versions are the classifiers' (the one list)
    SUPPORTED = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', f.read())

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = bool(
    os.environ.get("CI") or os.environ.get("SNAPCORE_REQUIRE_ORACLES") == "1"
)


def _pyenv_bins():
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    return sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin")), reverse=True)


os.environ["PATH"] = os.pathsep.join(_pyenv_bins() + [os.environ.get("PATH", "")])


@nox.session(python=SUPPORTED)
def tests(session):
    session.install(f"{HERE}[test]")
    scratch = os.path.abspath(session.create_tmp())
    session.chdir(scratch)
    session.run(
        "python",
        "-c",
        "import snapcore, sys; print('snapcore', snapcore.__version__, "
        "'from', snapcore.__file__, 'on', sys.version)",
    )
    args = shlex.split(os.environ.get("SNAPCORE_MATRIX_TESTS", "")) or ["tests"]
    # test paths are the tree's (pytest runs from the scratch directory); other words stay
    args = [
        os.path.join(HERE, a) if os.path.exists(os.path.join(HERE, a.split("::")[0])) else a
        for a in args
    ]
    # the suite's cores weigh gigabytes: one basetemp per session, gone when it ends
    basetemp = os.path.join(scratch, "pytest")
    try:
        session.run(
            "pytest",
            "-n",
            "auto",
            "-p",
            "no:cacheprovider",
            "-c",
            os.path.join(HERE, "pyproject.toml"),
            "--rootdir",
            HERE,
            "--basetemp",
            basetemp,
            *args,
            *session.posargs,
        )
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)
