"""Registry errors, on top of :mod:`shared.errors` (whose middleware maps them to JSON answers).

    shared.errors.Unavailable (503)
    └── StoreUnavailable (503)      the store's backend cannot be reached or stays busy; worth a retry

Unknown ids (:class:`KeyError`) and refused transitions (:class:`shared.contract.TransitionRefused`)
come out of the stores as they are; the routes turn them into 404 and 409.
"""

from __future__ import annotations

from shared.errors import Unavailable


class StoreUnavailable(Unavailable):
    """A store could not do its work for a reason outside the request (connection lost, file locked)."""
