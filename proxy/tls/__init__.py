"""The HTTPS front door: TLS listener, SNI certificates with hot reload, ACME (see each module)."""
