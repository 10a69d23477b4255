import sys

from sriovlib.cli import main

sys.exit(main())
