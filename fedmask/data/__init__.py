"""fedmask.data.datasets."""
