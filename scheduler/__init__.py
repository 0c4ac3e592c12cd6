"""The scheduler: named FIFO queues with leases, delayed retries, a dead-letter queue and redrive."""
