"""``python -m scheduler``: serve the scheduler with settings from the environment."""

from __future__ import annotations

import shared.web
from scheduler.app import create_app
from scheduler.settings import Settings
from shared.logs import setup_logging


def main() -> None:
    settings = Settings()
    setup_logging("scheduler", settings.log_level)
    shared.web.run(create_app(settings), settings)


if __name__ == "__main__":
    main()
