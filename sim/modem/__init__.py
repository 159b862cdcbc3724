"""An emulated SIMCom A7670 LTE modem: the sans-I/O module (`a7670`), its MQTT stack bridged
to a real broker (`mqtt_bridge`), and a runner that puts it on a pty (`pty_runner`)."""
