"""Turnout controller: starts containers, waits for health and moves proxy weights per strategy."""
