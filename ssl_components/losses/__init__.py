"""One loss per module."""

from ssl_components.losses.barlow_twins import barlow_twins_loss
from ssl_components.losses.byol import byol_loss
from ssl_components.losses.dino import dino_loss
from ssl_components.losses.infonce_queue import infonce_with_queue
from ssl_components.losses.nt_xent import nt_xent
from ssl_components.losses.simsiam import negative_cosine
from ssl_components.losses.swav import sinkhorn, swav_loss
from ssl_components.losses.vicreg import vicreg_loss, vicreg_terms

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "infonce_with_queue",
    "negative_cosine",
    "nt_xent",
    "sinkhorn",
    "swav_loss",
    "vicreg_loss",
    "vicreg_terms",
]
