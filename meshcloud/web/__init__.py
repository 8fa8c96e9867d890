"""The web UI: server-rendered pages (Jinja2), live updates over Server-Sent Events.

Every node serves the same UI from the same ASGI app as the API, so any node shows the
whole mesh. Pages render complete HTML on the server; a small script (`static/app.js`)
listens to the event stream and swaps in fresh fragments (`/ui/frag/...`) when something
changes, so pages stay live without a reload and work without a build step.
"""
