import sys

from gremlinkit.cli import main

sys.exit(main())
