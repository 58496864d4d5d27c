"""``python -m gradpaths``: the command line."""

import sys

from gradpaths._cli import main

sys.exit(main())
