"""``python -m vlmedge.language COMMAND...``: print the parse tree of a command."""

import sys

from vlmedge.language.cli import main

sys.exit(main())
