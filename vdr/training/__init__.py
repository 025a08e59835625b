"""Training: the argument groups of the training scripts (``arguments``), their losses, the evaluation a run does
before, during and after training (``evaluators``), LoRA, several processes, and the run's surroundings
(``run``: output folder, resuming, Ctrl-C, final save, metrics, push)."""
