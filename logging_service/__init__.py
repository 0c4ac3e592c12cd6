"""The logging service: ingests structured log lines in batches, stores them, answers queries."""
