"""The version is written once (snapcore/_version.py) and read everywhere from there."""

import importlib.metadata

import pytest

import snapcore
from snapcore import _version, cli, metadata


def test_one_version_everywhere(capsys):
    v = _version.__version__
    assert snapcore.__version__ == v
    assert metadata.__version__ == v  # what every core's SNAPCORE note records
    # setuptools read the same file when it installed us (pyproject.toml, dynamic version)
    assert importlib.metadata.version("snapcore") == v
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"snapcore {v}\n"
