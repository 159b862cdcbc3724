"""The SIMCom A7670 LTE modem: the drone's link beyond visual range, driven by AT commands.

Layers, bottom up:

- `at_engine` / `at_errors`: the sans-I/O AT protocol core (commands, responses, URCs,
  `> ` prompts, MQTT receive sequences) and the manual's error texts.
- `channel.AtChannel`: the serial port; one thread feeds the engine, others `call` it.
- `supervisor.ModemSupervisor`: bring-up (boot sync, SIM, registration, APN, data) as a state
  machine with a recovery ladder, publishing `state.ModemState` on the bus.
- `mqtt_at.AtMqttTransport`: MQTT over the module's own stack, a telemetry `Transport`.
- `sms` / `sms_pdu`: SMS in PDU mode (a store swept and emptied, the sender checked before
  anything is decoded) and the fallback for critical events.
- `operator_sms`: operator commands by SMS, authenticated (HMAC over command, counter and
  time), acted on through the bus and answered.
"""
