"""The one exception type that means "the user did something we can explain"."""


class UserError(Exception):
    """A mistake in the user's input (path, file, option, checkpoint).

    The CLI prints ``str(error)`` on one line and exits 2; the app shows it with
    ``st.error``. Anything else is a bug and keeps its traceback.
    """
