"""``python -m pyro_vae``: the same as the ``pyro-vae`` command."""

import sys

from .cli import main

sys.exit(main())
