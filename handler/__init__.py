"""The handler: workers that long-poll the scheduler, run each job's kind and report to the registry."""
