"""Traffic incidents: injected into the twin (ground truth), detected from device events."""
