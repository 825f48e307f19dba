"""One module per ``otf-statcut`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""
