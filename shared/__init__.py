"""Code that two or more Conveyor services use: the wire contract, settings, HTTP plumbing, logs, kinds."""
