"""The one base class of errors caused by user input (shown as one line, exit code 2)."""


class UserError(ValueError):
    """Bad input: an option, a file, a genotype, a run directory. The message says how to fix it."""
