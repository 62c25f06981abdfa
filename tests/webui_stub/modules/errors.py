"""Mirrors modules/errors.py: ``report`` prints the message (the real one also prints the traceback)."""

reported: list[str] = []


def report(message: str, *, exc_info: bool = False) -> None:
    reported.append(message)
    print(message)
