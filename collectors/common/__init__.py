"""What every room of the core shares: the one error type, how sizes, percentages and
counts are written for people, and how typed values are written as JSON."""
