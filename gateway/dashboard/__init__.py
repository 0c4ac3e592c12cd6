"""The operators' dashboard at ``/dashboard``: a login, a session cookie, the pages and their files, and
a live feed of the queues and instances (:mod:`.routes`, :mod:`.session`, :mod:`.live`, ``static/``)."""
