"""A Python layer module that fails while importing (for the error-message test)."""

import a_module_that_does_not_exist  # noqa: F401
