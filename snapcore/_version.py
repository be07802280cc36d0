"""snapcore's version: the one place it is written.

setuptools reads it statically (pyproject.toml, [tool.setuptools.dynamic]);
``snapcore --version`` and every core's SNAPCORE note import it from here.
"""

__version__ = "0.2.0"
