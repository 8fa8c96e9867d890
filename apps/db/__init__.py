"""Managed PostgreSQL: one primary per database, reached through every node."""
