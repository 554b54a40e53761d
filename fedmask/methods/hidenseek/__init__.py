"""fedmask.methods.hidenseek."""
