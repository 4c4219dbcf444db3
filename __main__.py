"""python -m maeconv: the command line."""
from .convert.cli import main

main()
