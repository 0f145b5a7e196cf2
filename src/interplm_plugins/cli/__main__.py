import sys

from interplm_plugins.cli import main

sys.exit(main())
