"""One loss per module."""

from ssl_components.losses.nt_xent import nt_xent

__all__ = ["nt_xent"]
