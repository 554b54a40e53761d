"""fedmask.methods.fedavg."""
