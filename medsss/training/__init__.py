"""Training: the PRM input layout, the PRM model and its scorer (Lightning modules build on these)."""
