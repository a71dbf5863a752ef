"""``python -m pk_notebook.testing``: run the fake provider server (``--help`` for options)."""

from .fake_server import main

main()
