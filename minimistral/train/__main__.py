"""`python -m minimistral.train`"""

import sys

from minimistral.train import main

sys.exit(main())
