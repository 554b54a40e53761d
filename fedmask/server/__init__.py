"""fedmask.server.app."""
