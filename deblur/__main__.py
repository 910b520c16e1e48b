"""`python -m deblur`: the `deblur` command (deblur/cli)."""

from .cli import main

main()
