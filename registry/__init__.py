"""The registry: the system of record for jobs (state machine, fencing, change events) and users."""
