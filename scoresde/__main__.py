"""`python -m scoresde ...` runs the command line, as the `scoresde` script does."""
import sys

from .cli import main

sys.exit(main())
