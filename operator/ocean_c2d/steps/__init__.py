"""The programs that run inside the stage pods: `ocean-c2d configure`, `filter`, `publish`."""
