"""``python -m registry``: serve the registry with settings from the environment (``REGISTRY_...``)."""

from __future__ import annotations

from registry.app import create_app
from registry.settings import Settings
from shared.logs import setup_logging
from shared.web import run


def main() -> None:
    settings = Settings()
    setup_logging("registry", settings.log_level)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
