class MaeconvError(Exception):
    """A problem with the user's input, reported as one line naming the file and the problem."""


def one_line(text: str) -> str:
    """`text` with control characters escaped: a file name holding a newline or a terminal escape
    code can neither split an error message nor act on the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def first_line(error: BaseException) -> str:
    """The first line of an error from another library (their messages run to pages), or its type."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
