"""Placeholder: filled in by its family work."""
