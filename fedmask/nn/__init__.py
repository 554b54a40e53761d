"""fedmask.nn."""
