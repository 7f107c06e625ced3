import sys

from mbv3_mobile.cli import main

sys.exit(main())
