"""`python -m recaption.cli ...`: the `recap` command."""

from . import main

main()
