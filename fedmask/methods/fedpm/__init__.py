"""fedmask.methods.fedpm."""
