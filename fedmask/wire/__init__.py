"""fedmask.wire."""
