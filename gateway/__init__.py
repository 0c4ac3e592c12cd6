"""The gateway: the only public entry, round-robin over healthy receptionists with per-client rate limits."""
