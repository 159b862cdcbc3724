"""SkyCourier's on-board daemon: configuration, logging, the message bus, and one sub-package
per subsystem, all talking through the bus rather than reaching into each other."""
