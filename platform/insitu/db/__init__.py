"""Persistence: SQLAlchemy models, engines and migrations (SQLite or PostgreSQL)."""
