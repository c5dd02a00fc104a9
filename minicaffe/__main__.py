"""``python -m minicaffe`` runs the command-line tool."""

from minicaffe.cli import main

raise SystemExit(main())
