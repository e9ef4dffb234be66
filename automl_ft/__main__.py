"""``python -m automl_ft`` is the ``automl-ft`` command."""

import sys

from automl_ft.cli import main

sys.exit(main())
