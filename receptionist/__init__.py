"""The receptionist: the public API behind the gateway. Validates each kind's payload, registers the job,
enqueues it, and answers lists, gets and result downloads."""
