"""`python -m minimistral.labs`"""

import sys

from minimistral.labs import main

sys.exit(main())
