"""The one exception base of refquant."""

__all__ = ["RefquantError"]


class RefquantError(ValueError):
    """Bad input to refquant: the message names the argument, the value and what was expected.

    A subclass of :class:`ValueError`, so ``except ValueError`` also catches it.
    """


# Tracebacks and reprs name the class where users import it from (refquant.RefquantError),
# not the private module that defines it.
RefquantError.__module__ = "refquant"
