"""fedmask.methods.fedsparsify."""
