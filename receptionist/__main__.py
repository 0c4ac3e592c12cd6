from receptionist.app import create_app
from receptionist.settings import Settings
from shared.kinds import require_kinds
from shared.logs import setup_logging
from shared.web import run

settings = Settings()
setup_logging(settings.instance_name("receptionist"), settings.log_level)
require_kinds(settings.instance_name("receptionist"))
run(create_app(settings), settings)
