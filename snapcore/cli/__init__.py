"""snapcore's command line (see main.py); the only package that prints or exits."""

from .main import main

__all__ = ["main"]
