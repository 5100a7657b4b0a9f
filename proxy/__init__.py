"""Turnout's data plane: an asyncio reverse proxy holding weighted upstream pools per service."""
