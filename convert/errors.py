class MaeconvError(Exception):
    """A problem with the user's input, reported as one line naming the file and the problem."""
