"""Missions: the sans-I/O core that flies a plan of legs (`core`, `stages`, `plan`), what it
is told and what it asks for (`inputs`, `actions`), the preflight against the autopilot's
parameters, the one runner that binds it to the bridge, and the durable journal."""
