"""``python -m logging_service``: serve it with settings from the environment (:mod:`shared.entry`)."""

from shared.entry import serve

if __name__ == "__main__":
    serve("logging_service")
