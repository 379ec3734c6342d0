import sys

from training.bench import main

sys.exit(main())
