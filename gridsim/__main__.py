import sys

from gridsim.cli import main

sys.exit(main())
