"""Actions orchestrate one job (a backup, a restore) across sources, storage and the engine."""
