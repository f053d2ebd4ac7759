"""Training recipes: how a model kind is fitted from a dataset.

``autoencoder`` fits the seed autoencoders (dense, conv, vae); ``contrastive`` the
clustering recipe (backbone, neighbour graph, head, decoder); ``communities`` the graph
partition that recipe's community head learns. Networks and layers live in
:mod:`training.models`; a recipe composes them and never the other way round.
"""
