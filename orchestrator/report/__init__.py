"""Reporting: the live console view and the machine-readable run summary."""
