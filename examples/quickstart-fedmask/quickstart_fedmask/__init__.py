"""quickstart_fedmask: Flower's PyTorch quickstart, switched to a fedmask strategy."""
