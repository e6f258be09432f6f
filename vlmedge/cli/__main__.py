import sys

from vlmedge.cli.main import main

sys.exit(main())
