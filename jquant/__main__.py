import sys

from jquant.cli import main

sys.exit(main())
