"""Route planning and airspace: no-fly zones and the operating area in a local metric frame,
shortest paths around zones, the multirotor energy model, and multi-drop planning."""
