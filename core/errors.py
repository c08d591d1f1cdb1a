"""The one error core raises for a caller's bad input.

`InvalidInput` names the parameter at fault and the fix ("k=12 exceeds the 10 images given").
The worker answers it as the user's 422 (`invalid_input`); any other exception out of core is a
bug and stays a `worker_error` with its traceback logged. It subclasses ValueError so that
library callers who catch ValueError keep working.
"""


class InvalidInput(ValueError):
    """The caller's images, labels or parameters cannot be used as given; the message says why."""
