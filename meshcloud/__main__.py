import sys

from meshcloud.cli import main

sys.exit(main())
