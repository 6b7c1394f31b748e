"""``python -m minilm`` is the ``minilm`` command (see ``minilm.cli``)."""

import sys

from minilm.cli import main

sys.exit(main())
