"""HTTP routes, one module per resource; each handler only translates between HTTP and the service."""
