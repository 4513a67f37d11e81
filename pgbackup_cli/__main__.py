"""python -m pgbackup_cli: the `pgbackup` command."""

import sys

from pgbackup_cli.cli import main

sys.exit(main())
