"""Runtime model lifecycle: serving recipes (``configs/serve/models/*.yaml``) deployed as their own
Serve applications next to the studio application, listed and evicted without touching the
others. ``recipe`` holds the schema, states and rows; ``lifecycle`` talks to Ray Serve."""
