"""u-blox NEO-6M GPS: sans-I/O NMEA/UBX stream decoder, epoch assembly into `GpsFix`."""
