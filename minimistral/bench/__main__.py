"""`python -m minimistral.bench`"""

import sys

from minimistral.bench import main

sys.exit(main())
