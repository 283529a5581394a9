"""telegraf."""
