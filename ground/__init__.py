"""The ground segment: what a dispatcher's side keeps of a fleet.

`ground.models` (the tables), `ground.db` (engines and migrations, SQLite by default and
PostgreSQL by URL), `ground.store` (the typed store API: ingest of decoded telemetry records,
queries for drones, tracks, events, orders and the audit log) and `ground.ingest` (the MQTT 5
subscriber that feeds the store, shareable by several instances).

It reads what the drones send with the shared wire format (`companion.telemetry.schema`) and
never imports the on-board daemon's internals; nothing on the drone side imports `ground`.
"""
