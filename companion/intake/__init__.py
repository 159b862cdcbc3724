"""Orders reaching the daemon: verified, queued durably, answered on the uplink, flown."""
