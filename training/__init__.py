"""aecluster offline training: data sources, autoencoders, k-means, evaluation, export."""
