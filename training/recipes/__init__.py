"""Training recipes: how a model kind is fitted from a dataset.

``autoencoder`` fits the seed autoencoders (dense, conv, vae); ``contrastive`` the
clustering recipe (backbone, neighbour graph, head, decoder); ``communities`` the graph
partition that recipe's community head learns; ``choices`` what the contrastive recipe
decides from the training images where an option is left to the data. Networks and layers
live in :mod:`training.models`; a recipe composes them and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras


@dataclass
class FittedNetworks:
    """What a recipe hands :mod:`training.job` to export: encoder, decoder, training curves."""

    encoder: keras.Model
    decoder: keras.Model
    history: dict[str, list[float]]
    # With graph_communities: the Louvain partition the head learnt (Partition.summary(),
    # plus the searches run and the head's agreement with it); the bundle's report keeps it.
    communities: dict[str, Any] | None = None
    # Options left to the data and what the recipe decided for them (training.recipes.choices),
    # e.g. {"view_flip": False, "mirror_ratio": 1.86}; the manifest records them.
    decided: dict[str, Any] = field(default_factory=dict)
