"""`python -m sozu.worker`."""

import sys

from sozu.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
