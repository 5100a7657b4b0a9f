"""Configuration: the model, and the readers of TOML, Compose files and command-line flags."""
