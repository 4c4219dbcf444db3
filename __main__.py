"""python -m maeconv: the command line."""
from .cli import main

main()
