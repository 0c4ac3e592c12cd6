from gateway.app import create_app
from gateway.settings import Settings
from shared.kinds import require_kinds
from shared.logs import setup_logging
from shared.web import run

if __name__ == "__main__":
    settings = Settings()
    setup_logging("gateway", settings.log_level)
    require_kinds("gateway")
    run(create_app(settings), settings)
