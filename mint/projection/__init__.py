"""Projections: SQLite read models that are pure folds of the log, checkpointed with their rows."""
