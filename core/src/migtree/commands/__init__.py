"""One module per ``migtree`` sub-command.

Each module defines ``add_parser(subparsers)`` which adds its parser and sets
``func=run`` on it; ``run(args) -> int`` returns the exit status. The CLI
finds the modules of this package by listing it, so adding a command touches
no other file.
"""
