"""fedmask.methods."""
