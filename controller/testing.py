"""Turnout's pytest plugin (entry point `turnout`): fixtures for testing an app's zero-downtime deploys.

Filled in by the app test harness; for now it only registers itself.
"""
