import sys

from restricted_sender.entrypoints.cli import main

sys.exit(main())
