"""fedmask.methods.masked."""
