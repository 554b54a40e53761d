"""fedmask.methods.ssfl."""
