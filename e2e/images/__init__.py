"""The real-node container images (build.sh); oci.py is importable for the unit tests."""
