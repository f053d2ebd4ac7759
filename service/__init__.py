"""aecluster online service: loads model bundles and answers cluster queries."""
