"""`python -m courtyard` is `courtyard`."""

from .cli import main

main()
