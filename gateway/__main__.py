"""``python -m gateway``: serve it with settings from the environment (:mod:`shared.entry`)."""

from shared.entry import serve

if __name__ == "__main__":
    serve("gateway", kinds=True)
