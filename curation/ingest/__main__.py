"""`python -m curation.ingest --serve MEMORY_BYTES`: the decoder helper process (`curation.ingest.decoder`)."""

import sys

from curation.ingest.decoder import serve

if len(sys.argv) == 3 and sys.argv[1] == "--serve":
    serve(int(sys.argv[2]))
else:
    print("usage: python -m curation.ingest --serve MEMORY_BYTES (started by the curation workers)", file=sys.stderr)
    sys.exit(2)
