import sys

from izoo.cli import main

sys.exit(main())
