import sys

from diarizer_service.local_server.cli import main

sys.exit(main())
