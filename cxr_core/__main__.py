import sys

from cxr_core.cli import main

sys.exit(main())
