"""Maintenance scripts of the book's repository (not part of the installed library):
``python -m tools.NAME``."""
