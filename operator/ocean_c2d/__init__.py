"""ocean-c2d: a Kubernetes operator for Ocean Protocol Compute-to-Data."""
