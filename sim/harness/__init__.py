"""What wires the companion's own code to emulated hardware: `skycourier sim`, its simulated
devices and camera, and (later) the hardware-in-the-loop rig. It may import `companion`; the
emulated devices themselves (`sim.vehicle`, `sim.gps`, `sim.modem`, `sim.camera`) never do."""
