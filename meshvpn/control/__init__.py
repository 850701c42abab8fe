"""The control plane's schema, shared by the node and the coordination server."""
