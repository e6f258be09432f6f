"""``python -m vlmedge.cli``: the same as the ``vlmedge`` console script."""

import sys

from vlmedge.cli.main import main

sys.exit(main())
