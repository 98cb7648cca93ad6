"""`fslm serve`: an OpenAI-compatible HTTP API over a stack, with stage traces, dynamic batching and a viewer.

from fslm.serve import create_app, serve, ServeSettings
app = create_app("my_stack.yaml", ServeSettings(max_batch=16))   # an ASGI app (tests, custom hosting)
serve("my_stack.yaml", ServeSettings(port=8000))                 # blocks, like the CLI
"""

from fslm.serve.app import create_app, serve
from fslm.serve.config import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
