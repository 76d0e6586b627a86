"""Training: the optimizer and `TrainState` (`train_state`), the jitted update (`train_step`),
how a run starts — resume, fresh, from another run's weights (`finetune`), from a teacher
(`initialisation`) — and the loop (`trainer`). Its modules sit in different layers of the import
contract (docs/architecture.md): the state and the update low, the loop on top."""
