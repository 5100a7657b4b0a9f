"""Test helpers: real upstream servers and a raw HTTP client (see upstreams.py)."""
