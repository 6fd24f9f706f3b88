"""The one base class of errors caused by user input (shown as one line, exit code 2).

The rule: whatever a user can cause (an option, a file, a genotype, a run directory, an argument
of the Python API) raises a `UserError` whose one-line message says what was wrong and how to
fix it. Any other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input: an option, a file, a genotype, a run directory. The message says how to fix it."""
