"""Running on many devices and processes: the mesh and partitioning rules (`sharding`), process
start-up, launch checks, the workdir lock and preemption (`distributed`), and faked CPU devices
for evaluation on a CPU host (`cpu_devices`)."""
