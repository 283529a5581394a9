"""What every room of the core shares: the one error type and how sizes, percentages and
counts are written for people."""
