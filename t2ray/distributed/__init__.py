"""Ray Train + DeepSpeed glue: runs any training function; knows nothing of RL or T2L."""
