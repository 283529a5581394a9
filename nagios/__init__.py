"""nagios."""
