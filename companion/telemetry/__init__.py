"""Telemetry uplink: the versioned wire schema, the durable store-and-forward queue, the
publisher that samples the bus into it and drains it over any MQTT `Transport`."""
