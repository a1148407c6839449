"""`python -m tasks.registry ...`: the registry's command line (tasks/registry/cli.py)."""

from tasks.registry.cli import main

main()
