from logging_service.app import create_app
from logging_service.settings import Settings
from shared.logs import setup_logging
from shared.web import run

settings = Settings()
setup_logging("logging_service", settings.log_level)
run(create_app(settings), settings)
