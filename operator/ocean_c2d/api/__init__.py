"""The operator-service-compatible HTTP API (`/api/v1/operator/`) that Ocean's V4 clients (provider v4,
ocean-node's OPF_K8 engine) speak: the pure request, translation and status layers (params, translate,
status_object), the store of Kubernetes objects it reads and writes (store), and the aiohttp shell (app).
"""
