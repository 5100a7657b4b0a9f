"""Rehearsal: a load generator, measured deploys of every strategy, their report, and the demo."""
