"""``python -m handler``: serve it with settings from the environment (:mod:`shared.entry`)."""

from shared.entry import serve

if __name__ == "__main__":
    serve("handler", kinds=True)
