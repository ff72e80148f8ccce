"""The live browser viewer (`emergence serve`): every run under a folder, every recorded step, while it records.

The server (server.py) reads run files through `replay` and hands the page the stored frame bytes, each
layer's scale and the palette; the page (static/) colours frames with thresholds computed by
`replay.palette`, so there is one definition of the colour rules, in Python. API: viewer/api.py.
"""

from viewer.catalog import Catalog
from viewer.server import DEFAULT_HOST, DEFAULT_PORT, ViewerServer, serve, start_in_thread

__all__ = ["Catalog", "DEFAULT_HOST", "DEFAULT_PORT", "ViewerServer", "serve", "start_in_thread"]
