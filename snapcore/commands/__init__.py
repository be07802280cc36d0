"""Subcommands of the snapcore CLI (snapcore.cli.SUBCOMMANDS maps names here).

Each module exposes ``main(argv) -> int`` and follows cli.py's rules: one-line
errors ("snapcore: error: ..."), the documented exit codes, no tracebacks.
"""
