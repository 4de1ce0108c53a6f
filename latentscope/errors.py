"""Errors a user can cause and fix.

Every message names the input at fault and what to do about it; the CLI prints
it on one line and exits with status 2. Programming errors stay ordinary
exceptions.
"""


class LatentscopeError(Exception):
    """Base class for errors caused by user input."""


class InputError(LatentscopeError, ValueError):
    """An argument or path given by the user is wrong."""


class ImageError(LatentscopeError):
    """An image file cannot be used; the message is the reason recorded in the scope."""


class ModelError(LatentscopeError):
    """A model reference cannot be resolved or loaded."""


class ScopeError(LatentscopeError):
    """A scope directory is missing, damaged or made with another model."""


class StorageError(LatentscopeError):
    """Writing results failed (for example the disk is full); nothing already stored was changed."""
