"""`python -m fcclip_ros.cli`: `fcclip-ros` where no console script is installed."""

import sys

from fcclip_ros.cli import main

sys.exit(main())
