"""fedmask.methods.mpfl."""
