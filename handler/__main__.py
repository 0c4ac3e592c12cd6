from handler.app import create_app
from handler.settings import Settings
from shared.kinds import require_kinds
from shared.logs import setup_logging
from shared.web import run

settings = Settings()
setup_logging(settings.instance_name("handler"), settings.log_level)
require_kinds(settings.instance_name("handler"))
run(create_app(settings), settings)
